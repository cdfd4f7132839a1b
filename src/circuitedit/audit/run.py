"""`audit_edit`: is the old fact gone, or only hidden? Four families of probes and a verdict."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

from torch import nn

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
class AuditConfig:
    probe_steps: int = 150
    min_probe_accuracy: float = 0.5  # probe layers below this held-out accuracy are not trusted
    probe_folds: int = 5  # k-fold cross-validation for held-out accuracy (0: leave-one-out)
    lens_top_k: int = 10  # the logit lens "reaches" the old object when it ranks in this top-k
    relearn_steps: int = 10
    relearn_lr: float = 3e-5
    relearn: bool = True
    require_known: bool = True  # probe / relearning facts: only those the base model answers
    use_subject_pool: bool = True  # add pool subjects the base model places among the objects
    max_new_tokens: int = 12
    seed: int = 0


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
