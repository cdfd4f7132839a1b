"""Audit outputs: load the stage models of an edit directory; write audit.json/md/html."""

from __future__ import annotations

import json
from pathlib import Path

from ..audit.run import AuditReport
from ..core.files import write_text_atomic
from ..render.html import audit_html
from .history import HISTORY_FILE, EditHistory, HistoryError
from .outputs import applied_stage, read_edit_json, stage_dirs

# ---- rebuilding the stage models -------------------------------------------------------------


def load_edit(edit_dir: Path | str, model: str | None = None, dtype: str = "auto", device: str | None = None,
              history_edit: int | None = None):
    """(base, tokenizer, request, stage1, stage2, edit_json) from an `edit --out` directory.

    The base model is edit.json's "model" (or `model`, or the embedded default); stage 1 is it
    with adapters/unlearn merged (None for a one-stage edit), stage 2 it with every saved stage
    applied in training order (adapters merged, weight deltas added). An edit history's edit
    `history_edit` (default: its last) is audited on the model holding the edits before it.
    """
    from ..models import load_model

    edit_dir = Path(edit_dir)
    if (edit_dir / HISTORY_FILE).exists():
        return load_history_edit(edit_dir, history_edit, model, dtype, device)
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


def load_history_edit(root: Path, edit_id: int | None, model: str | None, dtype: str, device: str | None):
    """`load_edit`'s tuple for one edit of an edit history: the base is the model holding every
    edit before it, the stages its own; its first request is audited."""
    from ..models import load_model

    history = EditHistory.open(root)
    if not history.entries:
        raise HistoryError(f"{root}: the history holds no edit to audit")
    entry = history.find(edit_id) if edit_id is not None else history.entries[-1]
    loaded = load_model(model or history.model, dtype=dtype, device=device)
    earlier = EditHistory(root, history.model, history.entries[:history.entries.index(entry)])
    base = earlier.edited_model(loaded.model)
    stages = {name: root / entry.directory / "adapters" / name for name in entry.stages}
    stage1 = applied_stage(base, stages["unlearn"]) if "unlearn" in stages else None
    stage2 = stage1 if stage1 is not None else base
    for name, directory in stages.items():
        if name != "unlearn":
            stage2 = applied_stage(stage2, directory)
    return base, loaded.tokenizer, entry.requests[0], stage1, stage2, {"model": loaded.name, "history_edit": entry.id}


def write_audit(report: AuditReport, out_dir: Path | str) -> tuple[Path, Path]:
    """OUT/audit.json and OUT/audit.md (returned), and OUT/audit.html."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "audit.json", out_dir / "audit.md"
    write_text_atomic(json_path, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    write_text_atomic(md_path, report.to_markdown())
    write_text_atomic(out_dir / "audit.html", audit_html(report.to_dict()))
    return json_path, md_path
