"""`edit()`: localize, unlearn, learn, measure. The base model is never modified."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

from torch import nn

from ..core.config import CheckedConfig, ConfigValueError, FieldChecks
from ..core.prompt_scan import PromptScan
from ..core.reference_cache import ModelReferences, ReferenceCache
from ..core.timing import Timings
from ..core.tokens import (
    CHAT,
    TargetTokenizationError,
    prompt_and_target_ids,
    render_prompt,
    uses_chat_template,
)
from ..data.facts import Fact, control_facts, controls_for, retain_prompts, subject_pool
from ..data.requests import EditRequest
from ..edit import EditorConfig, EditOutcome, RetainSet, StageConfig, TrainingContext, get_editor
from ..edit.base import KeyMemory, freeze, uses_localization, uses_retain
from ..edit.keyed import KeyedConfig
from ..edit.training.prompts import (
    cached_prefixes,
    same_template_prompts,
    template_scan_prompts,
    training_contexts,
    training_prompts,
)
from ..evaluate.metrics import ProbeRow, edit_metrics, probe_rows
from ..evaluate.snapshots import (
    EvalConfig,
    Snapshot,
    cached_control_snapshot,
    control_snapshot,
    probes_for,
    take_snapshot,
)
from ..localize import LocalizationResult, LocalizeConfig, get_localizer, localize
from ..models.arch import get_adapter
from ..models.components import Component


@dataclass
class EditConfig(CheckedConfig):
    """Everything an edit is run with, by section; `validate` runs at construction."""

    method: str = field(default="unlearn-then-learn", metadata={"help": "the editing method"})
    localize: LocalizeConfig = field(default_factory=LocalizeConfig, metadata={"help": "which components the edit trains"})
    editor: EditorConfig = field(default_factory=EditorConfig, metadata={"help": "how the editor trains them"})
    evaluate: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "how the edit is measured"})

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Raise a ValueError naming the first field (as `section.field`) that cannot work, before
        any model work. Construction runs it; run it again after setting fields (CLI flags)."""
        check = FieldChecks(self, "config")
        check.text("method")
        for name, config_class in (("localize", LocalizeConfig), ("editor", EditorConfig), ("evaluate", EvalConfig)):
            section = getattr(self, name)
            if not isinstance(section, config_class):
                check.fail(name, f"expected a {config_class.__name__}, got {type(section).__name__}")
            section.validate(name)
        get_editor(self.method)
        get_localizer(self.localize.method)

    @classmethod
    def from_dict(cls, data: dict) -> EditConfig:
        """Build a config from `to_dict()` output; unknown keys fail with a ValueError naming them,
        bad values with one naming `section.field`."""
        if not isinstance(data, dict):
            raise ValueError(f"config: expected a mapping, got {type(data).__name__}")
        unknown = set(data) - {"method", "localize", "editor", "evaluate"}
        if unknown:
            raise ValueError(f"config: unknown key(s): {', '.join(sorted(unknown))}")
        editor = dict(_section(data, "editor", EditorConfig))
        for stage in ("unlearn", "learn"):
            if stage in editor:
                try:
                    editor[stage] = StageConfig(**_section(editor, stage, StageConfig, "editor."))
                except ConfigValueError as exc:  # named where it sits, not as a lone stage
                    raise exc.within(f"editor.{stage}") from None
        if "keyed" in editor:
            try:
                editor["keyed"] = KeyedConfig(**_section(editor, "keyed", KeyedConfig, "editor."))
            except ConfigValueError as exc:
                raise exc.within("editor.keyed") from None
        return cls(
            method=data.get("method", "unlearn-then-learn"),
            localize=LocalizeConfig(**_section(data, "localize", LocalizeConfig)),
            editor=EditorConfig(**editor),
            evaluate=EvalConfig(**_section(data, "evaluate", EvalConfig)),
        )


def _section(data: dict, name: str, config_class: type, prefix: str = "") -> dict:
    """`data[name]` as keyword arguments of `config_class`; a key it has no field for, or a
    section that is not a mapping, fails with a ValueError naming it."""
    values = data.get(name) or {}
    if not isinstance(values, dict):
        raise ValueError(f"config: {prefix}{name}: expected a mapping, got {type(values).__name__}")
    known = [f.name for f in fields(config_class)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"config: {prefix}{name}.{unknown[0]}: unknown field (known: {', '.join(known)})")
    return values


@dataclass
class EditResult:
    request: EditRequest
    model: nn.Module
    components: list[Component]
    localization: LocalizationResult | None
    outcome: EditOutcome
    rows: list[ProbeRow]
    metrics: dict
    timings: dict
    config: EditConfig

    def to_dict(self) -> dict:
        scores = self.localization.component_scores() if self.localization else {}
        return {
            "request": self.request.to_dict(),
            "method": self.config.method,
            "components": [{"name": c.name, "layer": c.layer, "kind": c.kind, "head": c.head,
                            "score": scores.get(c)} for c in self.components],
            "localization": self.localization.to_dict() if self.localization else None,
            "metrics": self.metrics,
            "stages": [s.to_dict() for s in self.outcome.stages],
            "saved_stages": [a.name for a in self.outcome.adapters],  # adapters/<name>, in training order
            "steps": self.outcome.steps,
            "timings": self.timings,
            "rows": [r.to_dict() for r in self.rows],
            "config": self.config.to_dict(),
        }


def check_request(tokenizer, request: EditRequest) -> None:
    """Fail early, with the field named, on objects the tokenizer cannot express."""
    for field_name, obj in (("old_object", request.old_object), ("new_object", request.new_object)):
        try:
            prompt_and_target_ids(tokenizer, request.text, obj)
        except TargetTokenizationError as exc:
            raise TargetTokenizationError(f"{field_name}: {exc}") from None


def build_context(model, tokenizer, request: EditRequest, config: EditorConfig,
                  references: ModelReferences | None = None, scan: PromptScan | None = None,
                  with_retain: bool = True) -> TrainingContext:
    """The request's training prompts and its retain set (neighbours first, pinned; without
    `with_retain` the neighbours are left in `retain_prompts` for a caller pooling many requests)."""
    prefixes = cached_prefixes(references, model, tokenizer, config.n_prefixes, seed=config.seed)
    prompts = training_prompts(request, prefixes)
    contexts = training_contexts(request, prefixes)
    if uses_chat_template(tokenizer):
        chat = [render_prompt(tokenizer, q, CHAT) for q in [request.text, *request.questions]]
        prompts, contexts = prompts + chat, contexts + [""] * len(chat)
    neighbours = same_template_prompts(model, tokenizer, request, subject_pool(), config.n_template_neighbours,
                                       config.n_sibling_neighbours, scan)
    retain = RetainSet.from_model(model, tokenizer, neighbours + retain_prompts(), pinned=len(neighbours)) \
        if with_retain else None
    old_token = prompt_and_target_ids(tokenizer, request.text, request.old_object)[1][0]
    return TrainingContext(prompts=prompts, retain=retain, old_token=old_token, contexts=contexts,
                           retain_prompts=neighbours)


def preloads_template_scan(config: EditConfig) -> bool:
    """Whether an edit under `config` scans the whole filled template first (for its hard negatives)."""
    return config.editor.n_template_neighbours > 0


def template_scan(model: nn.Module, tokenizer, request: EditRequest,
                  references: ModelReferences | None = None) -> PromptScan:
    """A PromptScan of the unedited model holding the edit template filled with every pool
    subject, scanned as one group (kept in `references`): the localizer's corrupting-subject
    search and the hard-negative scan then read the same bits whatever else ran, `circuitedit
    localize` picks the subject an edit picks, and a later edit of the same template reads the
    rows back."""
    scan = PromptScan(model, tokenizer)
    old_token = prompt_and_target_ids(tokenizer, request.text, request.old_object)[1][0]
    scan.preload(template_scan_prompts(request, subject_pool()), old_token, references)
    return scan


def measure(model: nn.Module, tokenizer, request: EditRequest, probes: list, controls: list[Fact],
            config: EvalConfig, control_baseline: Snapshot | None = None) -> Snapshot:
    """Every probe on `model`: the request's own probes as one group and the whole control set as
    another (or `control_baseline`, that group already taken), the same batches before and after
    an edit, so an unchanged model gives unchanged answers."""
    own = [p for p in probes if p.kind != "control"]
    snap = take_snapshot(model, tokenizer, request, own, config, margins=True)
    ctrl = control_baseline or control_snapshot(model, tokenizer, request, controls, config)
    snap.continuations.update({k: v for k, v in ctrl.continuations.items() if k[0] == "control"})
    snap.margins.update({k: v for k, v in ctrl.margins.items() if k[0] == "control"})
    return snap


def in_dtypes_of(base: nn.Module, edited: nn.Module) -> nn.Module | None:
    """A copy of `base` whose every parameter has the dtype of `edited`'s, or None when they
    already agree (an editor that upcast what it trained)."""
    wanted = {name: p.dtype for name, p in edited.named_parameters()}
    if all(wanted.get(name, p.dtype) == p.dtype for name, p in base.named_parameters()):
        return None
    matched = copy.deepcopy(base)
    for name, param in matched.named_parameters():
        param.data = param.data.to(wanted.get(name, param.dtype))
    return matched.eval()


def edit(
    model: nn.Module,
    tokenizer,
    request: EditRequest,
    config: EditConfig | None = None,
    *,
    controls: list[Fact] | None = None,
    control_baseline: Snapshot | None = None,
    components: list[Component] | None = None,
    progress: Callable | None = None,
    references: ReferenceCache | None = None,
    memory: KeyMemory | None = None,
) -> EditResult:
    """Edit one fact on a copy of `model` and measure the edit against the unedited model.

    components: skip localization and train these. controls: the control facts (default: the
    built-in set; those naming the request's subject are left out of the metrics).
    control_baseline: `control_snapshot` of `controls` on the unedited model, reused across many
    edits of the same model. references: where
    the unedited model's answers to the built-in texts (control facts, sampled prefixes) are
    kept between edits and runs (`ReferenceCache.default()` on disk; None computes them anew).
    memory: in a sequence of edits, what a key-value editor keys on (the unedited model's key
    statistics, the earlier edits' keys); default: `model`'s statistics.
    """
    config = config or EditConfig()
    config.validate()
    timings = Timings()
    with timings.phase("total"):
        check_request(tokenizer, request)
        get_adapter(model)
        bound = None
        if references is not None:
            with timings.phase("fingerprint"):
                bound = references.for_model(model)
        with timings.phase("evaluate_before"):
            controls = control_facts() if controls is None else controls
            if control_baseline is None and bound is not None:
                control_baseline = cached_control_snapshot(bound, model, tokenizer, request, controls, config.evaluate)
            probes = probes_for(request, controls_for(request, controls), tokenizer)
            before = measure(model, tokenizer, request, probes, controls, config.evaluate, control_baseline)
        with timings.phase("scan"):
            scan = (template_scan(model, tokenizer, request, bound) if preloads_template_scan(config)
                    else PromptScan(model, tokenizer))
        with timings.phase("localize"):
            localization, components = localized_components(model, tokenizer, request, config, scan, components)
        with timings.phase("prepare"):
            context = build_context(model, tokenizer, request, config.editor, bound, scan,
                                    with_retain=uses_retain(config.method))
            context.memory = memory
            working = copy.deepcopy(model)
            freeze(working)
        with timings.phase("train"):
            outcome = get_editor(config.method)(working, tokenizer, request, components, context, config.editor,
                                                progress)
            outcome.model.eval()
        timings.update({f"{stage.name}_s": stage.seconds for stage in outcome.stages})
        with timings.phase("evaluate_after"):
            after = measure(outcome.model, tokenizer, request, probes, controls, config.evaluate)
            if (matched := in_dtypes_of(model, outcome.model)) is not None:
                # An editor that trains in fp32 (ft-full) is compared with the base model in fp32,
                # so that rounding alone moves no near-tie.
                before = measure(matched, tokenizer, request, probes, controls, config.evaluate)
        rows = probe_rows(request, probes, before, after, config.evaluate.known_margin)
        metrics = edit_metrics(request, rows, before, after)
    return EditResult(request, outcome.model, list(components), localization, outcome, rows, metrics, dict(timings),
                      config)


def localized_components(model: nn.Module, tokenizer, request: EditRequest, config: EditConfig, scan: PromptScan,
                         components: list[Component] | None) -> tuple[LocalizationResult | None, list[Component]]:
    """(the localization, the components it selects), or (None, `components`) when given."""
    if components is not None:
        return None, components
    # The localizer's corrupting-subject search reads the same template scan as the hard negatives.
    localization = localize(model, tokenizer, request, config.localize, scan)
    components = localization.select_by(config.localize, get_adapter(model).num_layers(model))
    if not components and uses_localization(config.method):
        raise ValueError(f"no components to edit: {config.localize.method} localization selected none "
                         f"(localize.kinds {config.localize.kinds!r}, max_layer_fraction "
                         f"{config.localize.max_layer_fraction:g}, fraction {config.localize.fraction})")
    return localization, components
