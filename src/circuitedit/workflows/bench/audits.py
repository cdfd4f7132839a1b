"""bench --audit: audit each edit, keep the verdict and 0/1 metrics in its record."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from ...core.files import write_text_atomic
from ...data.facts import Fact
from ...data.requests import EditRequest

REACH_KEYS = {"logit lens": "reach_logit_lens", "linear probe": "reach_linear_probe",
              "indirect prompts": "reach_indirect_prompts", "formats": "reach_formats", "relearning": "reach_relearning"}


def relation_objects(request: EditRequest, requests: Sequence[EditRequest], limit: int = 8) -> list[str]:
    """Up to `limit` distinct objects of the data set's other requests of the relation (none when
    the request has no relation)."""
    if request.relation is None:
        return []
    same = [r for r in requests if r.relation == request.relation and r.subject != request.subject]
    objects = list(dict.fromkeys(o for r in same for o in (r.old_object, r.new_object)))
    return objects[:limit]


def audit_result(model, tokenizer, request: EditRequest, result, requests: Sequence[EditRequest],
                 controls: Sequence[Fact], path: Path, fact, max_relation_facts: int = 48) -> dict:
    """Audit one bench edit; the full audit goes to `path`, the verdict and 0/1 metrics into the record.

    Probe and relearning facts: the data set's other facts of the relation (never the edited
    one; the audit drops anything naming the subject) plus the built-in controls, found once per
    fact (kept on `fact`, the run's FactWork) for all its methods. Multiple-choice distractors fall back on the data
    set's objects of the relation when those facts give none."""
    from ...audit.run import AuditConfig, audit_edit, relation_facts, stage_models

    config = AuditConfig()
    if fact.audit_facts is None:
        same = [Fact(r.text, r.old_object, r.relation) for r in requests
                if r.relation == request.relation and r.subject != request.subject][:max_relation_facts]
        tick = time.perf_counter()
        fact.audit_facts = relation_facts(model, tokenizer, request, config, [*controls, *same])
        fact.audit_facts_s = time.perf_counter() - tick
    stage1, stage2 = stage_models(model, result)
    report = audit_edit(model, tokenizer, request, stage1, stage2, config, relation=fact.audit_facts,
                        distractor_pool=relation_objects(request, requests))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(report.to_dict(), default=str) + "\n")
    label = report.verdict["label"]
    reached = {key: float(any(name.startswith(prefix) for name in report.verdict["reaching"]))
               for prefix, key in REACH_KEYS.items()}
    metrics = {"not_forgotten": float(label == "not forgotten"), "soft_forgetting": float(label == "soft forgetting"),
               "hard_forgetting": float(label == "hard forgetting"), **reached,
               "audit_seconds": report.timings["total_s"] + fact.audit_facts_s}  # shared cost counted each time
    return {"verdict": label, "reaching": report.verdict["reaching"], "not_measured": report.verdict["not_measured"],
            "file": str(path), "metrics": metrics}
