"""Audit outputs: load the stage models of an edit directory; write audit.json/md/html."""

from __future__ import annotations

import json
from pathlib import Path

from ..audit.run import AuditReport
from ..core.files import write_text_atomic
from ..render.html import audit_html
from .outputs import applied_stage, read_edit_json, stage_dirs

# ---- rebuilding the stage models -------------------------------------------------------------


def load_edit(edit_dir: Path | str, model: str | None = None, dtype: str = "auto", device: str | None = None):
    """(base, tokenizer, request, stage1, stage2, edit_json) from an `edit --out` directory.

    The base model is edit.json's "model" (or `model`, or the embedded default); stage 1 is it
    with adapters/unlearn merged (None for a one-stage edit), stage 2 it with every saved stage
    applied in training order (adapters merged, weight deltas added).
    """
    from ..models import load_model

    edit_dir = Path(edit_dir)
    meta, request = read_edit_json(edit_dir)
    stages = stage_dirs(edit_dir, meta)
    if not stages:
        raise FileNotFoundError(f"{edit_dir / 'adapters'} holds no saved stage (no adapter and no weight delta)")
    loaded = load_model(model or meta.get("model"), dtype=dtype, device=device)
    stage1 = applied_stage(loaded.model, stages["unlearn"]) if "unlearn" in stages else None
    stage2 = stage1 if stage1 is not None else loaded.model
    for name, directory in stages.items():
        if name != "unlearn":
            stage2 = applied_stage(stage2, directory)
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
