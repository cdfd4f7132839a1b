"""Audit outputs: load the stage models of an edit directory; write audit.json/md/html."""

from __future__ import annotations

import json
from pathlib import Path

from ..audit.run import AuditReport
from ..core.files import write_text_atomic
from ..render.html import audit_html
from .outputs import STAGES, adapter_dirs, merged_adapter, read_edit_json

# ---- rebuilding the stage models -------------------------------------------------------------


def load_edit(edit_dir: Path | str, model: str | None = None, dtype: str = "auto", device: str | None = None):
    """(base, tokenizer, request, stage1, stage2, edit_json) from an `edit --out` directory.

    The base model is edit.json's "model" (or `model`, or the embedded default); stage 1 is it
    with adapters/unlearn merged, stage 2 stage 1 with adapters/learn merged.
    """
    from ..models import load_model

    edit_dir = Path(edit_dir)
    meta, request = read_edit_json(edit_dir)
    stages = adapter_dirs(edit_dir)
    for stage in STAGES:
        if stage not in stages:
            raise FileNotFoundError(f"{edit_dir / 'adapters' / stage} has no PEFT adapter "
                                    f"(audit needs an unlearn-then-learn edit)")
    loaded = load_model(model or meta.get("model"), dtype=dtype, device=device)
    stage1 = merged_adapter(loaded.model, stages["unlearn"])
    stage2 = merged_adapter(stage1, stages["learn"])
    return loaded.model, loaded.tokenizer, request, stage1, stage2, {**meta, "model": loaded.name}


def write_audit(report: AuditReport, out_dir: Path | str) -> tuple[Path, Path]:
    """OUT/audit.json and OUT/audit.md (returned), and OUT/audit.html."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "audit.json", out_dir / "audit.md"
    write_text_atomic(json_path, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    write_text_atomic(md_path, report.to_markdown())
    write_text_atomic(out_dir / "audit.html", audit_html(report.to_dict()))
    return json_path, md_path
