"""`audit_edit`: is the old fact gone, or only hidden? Four families of probes and a verdict."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

from torch import nn

from ..core.config import CheckedConfig, FieldChecks
from ..data.facts import Fact
from ..data.requests import EditRequest
from ..edit.base import freeze
from .access import access_report
from .choices import multiple_choice_report, pick_distractors
from .data import known_facts, pool_facts, same_relation_facts
from .formats import formats_report
from .latent import ProbeFact, latent_report
from .relearn import forget_measure, relearn_report
from .status import skipped
from .verdict import verdict


@dataclass
class AuditConfig(CheckedConfig):
    """How an edit is audited; `validate` runs at construction."""

    probe_steps: int = field(default=150, metadata={"help": "training steps of each latent linear probe"})
    min_probe_accuracy: float = field(default=0.5, metadata={"help": "probe layers below this held-out accuracy are not trusted"})
    probe_folds: int = field(default=5, metadata={"help": "k-fold cross-validation for held-out accuracy (0: leave-one-out)"})
    lens_top_k: int = field(default=10, metadata={"help": "the logit lens reaches the old object when it ranks in this top-k"})
    relearn_steps: int = field(default=10, metadata={"help": "Adam steps of each relearning attack"})
    relearn_lr: float = field(default=3e-5, metadata={"help": "learning rate of the relearning attacks"})
    relearn: bool = field(default=True, metadata={"help": "run the relearning attacks"})
    require_known: bool = field(default=True, metadata={"help": "probe / relearning facts: only those the base model answers"})
    use_subject_pool: bool = field(default=True, metadata={"help": "add pool subjects the base model places among the objects"})
    max_new_tokens: int = field(default=12, metadata={"help": "greedy tokens generated per audit prompt"})
    seed: int = field(default=0, metadata={"help": "recorded with the report (the audit draws nothing at random today)"})

    def validate(self, section: str = "audit") -> None:
        """Raise a ValueError naming the first field (as `section.field`) that cannot audit."""
        check = FieldChecks(self, section)
        for name in ("probe_steps", "lens_top_k", "relearn_steps", "max_new_tokens"):
            check.integer(name, 1)
        check.number("min_probe_accuracy", 0, 1)
        check.integer("probe_folds", 0)
        if self.probe_folds == 1:
            check.fail("probe_folds", "must be 0 (leave-one-out) or at least 2, got 1")
        check.number("relearn_lr", 0, low_open=True)
        for name in ("relearn", "require_known", "use_subject_pool"):
            check.flag(name)
        check.integer("seed")


@dataclass
class AuditReport:
    request: EditRequest
    latent: dict
    access: dict
    formats: dict
    relearn: dict
    verdict: dict
    timings: dict
    config: AuditConfig
    facts: list[ProbeFact] = field(default_factory=list)
    model: str | None = None

    def to_dict(self) -> dict:
        return {"model": self.model, "request": self.request.to_dict(), "verdict": self.verdict,
                "latent": self.latent, "access": self.access, "formats": self.formats, "relearn": self.relearn,
                "relation_facts": [asdict(f) for f in self.facts], "timings": self.timings,
                "config": asdict(self.config)}

    def to_markdown(self) -> str:
        from .markdown import audit_markdown

        return audit_markdown(self.to_dict())


def audit_edit(base_model: nn.Module, tokenizer, request: EditRequest, stage1_model: nn.Module | None,
               stage2_model: nn.Module, config: AuditConfig | None = None, *,
               facts: list[Fact] | None = None, relation: list[ProbeFact] | None = None,
               model_name: str | None = None, distractor_pool: list[str] | None = None) -> AuditReport:
    """Audit one edit. facts: candidate same-relation facts (default: the built-in control facts);
    relation: `relation_facts(...)` already computed for this request and base model (bench
    audits several edits of one fact); distractor_pool: more objects of the relation (a data
    set's) for multiple choice, after the probe's candidates and the request's neighbourhood
    answers. Every section is in the report, measured or skipped with the reason."""
    config = config or AuditConfig()
    timings: dict[str, float] = {}
    start = tick = time.perf_counter()
    models = {"base": base_model, "stage1": stage1_model, "stage2": stage2_model}
    models = {name: m for name, m in models.items() if m is not None}
    relation = relation_facts(base_model, tokenizer, request, config, facts) if relation is None else relation
    timings["facts_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    edit_fact = ProbeFact(request.text, request.subject, request.old_object)
    latent = latent_report(models, tokenizer, edit_fact, request.old_object, request.new_object, relation,
                           config.probe_steps, config.min_probe_accuracy, config.probe_folds)
    timings["latent_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    distractors = pick_distractors(request, latent["candidates"], distractor_pool)
    choices = multiple_choice_report(models, tokenizer, request, distractors)
    access = access_report(models, tokenizer, request, relation, choices, config.max_new_tokens)
    timings["access_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    formats = formats_report(models, tokenizer, request, choices, config.max_new_tokens)
    timings["formats_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    relearn = _relearn_section(base_model, stage2_model, tokenizer, request, relation, config)
    if config.relearn:
        timings["relearn_s"] = time.perf_counter() - tick

    data = {"request": request.to_dict(), "latent": latent, "access": access, "formats": formats, "relearn": relearn}
    result = verdict(data, config.lens_top_k)
    timings["total_s"] = time.perf_counter() - start
    timings = {k: round(v, 2) for k, v in timings.items()}
    return AuditReport(request, latent, access, formats, relearn, result, timings, config, relation, model_name)


def _relearn_section(base_model: nn.Module, stage2_model: nn.Module, tokenizer, request: EditRequest,
                     relation: list[ProbeFact], config: AuditConfig) -> dict:
    if not config.relearn:
        return skipped("disabled (--no-relearn)")
    before = forget_measure(stage2_model, tokenizer, request)
    relearn = relearn_report(stage2_model, tokenizer, request, relation, config.relearn_steps, config.relearn_lr, before)
    relearn["base"] = forget_measure(base_model, tokenizer, request)
    return relearn


def relation_facts(base_model: nn.Module, tokenizer, request: EditRequest, config: AuditConfig,
                   facts: list[Fact] | None = None) -> list[ProbeFact]:
    """The facts the probes and relearning attacks use: other facts of the edit's relation (that
    the unedited model knows, with `require_known`), plus subject-pool entities it places among
    the relation's objects; never the edited fact."""
    relation = same_relation_facts(request, facts)
    if config.require_known:
        relation = known_facts(base_model, tokenizer, relation)
    if config.use_subject_pool:
        objects = sorted({f.answer for f in relation} | {request.old_object})
        seen = {f.subject.casefold() for f in relation}
        relation += [f for f in pool_facts(base_model, tokenizer, request, objects) if f.subject.casefold() not in seen]
    return relation


def stage_models(base_model: nn.Module, result) -> tuple[nn.Module | None, nn.Module]:
    """(stage1, stage2) of an in-memory EditResult: stage 1 is the base model with the result's
    'unlearn' adapter merged (None when the method has no unlearning stage), stage 2 the edit."""
    from peft import get_peft_model, set_peft_model_state_dict

    from ..edit.ia3 import merge_fp32

    artifacts = {a.name: a for a in result.outcome.adapters}
    stage1 = None
    if "unlearn" in artifacts:
        art = artifacts["unlearn"]
        peft_model = get_peft_model(copy.deepcopy(base_model), copy.deepcopy(art.peft_config))
        set_peft_model_state_dict(peft_model, art.state)
        stage1 = _frozen(merge_fp32(peft_model))
    return stage1, _frozen(result.model)


def _frozen(model: nn.Module) -> nn.Module:
    freeze(model)
    return model.eval()
