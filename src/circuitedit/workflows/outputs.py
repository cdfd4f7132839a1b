"""The edit output directory: `edit.json`, adapters, `report.html`, the model, written atomically."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..core.files import atomic_directory, write_json

# The file every output directory of its kind holds: an existing --out without it is refused.
EDIT_FILE = "edit.json"
LOCALIZATION_FILE = "localization.json"


def write_edit_outputs(result, out_dir: Path, tokenizer, save_model: bool = False,
                       extra: Callable[[Path], None] | None = None) -> Path:
    """edit.json, report.html, both adapters in PEFT format and (optionally) the edited model, atomically."""
    with atomic_directory(out_dir, marker=EDIT_FILE) as tmp:
        write_json(tmp / EDIT_FILE, result.to_dict())
        for artifact in result.outcome.adapters:
            artifact.save(tmp / "adapters" / artifact.name)
        if save_model:
            model = result.model
            if hasattr(model, "merge_and_unload"):
                from ..edit.ia3 import merge_fp32

                model = merge_fp32(model)
            model.save_pretrained(tmp / "model")
            tokenizer.save_pretrained(tmp / "model")
        if extra:
            extra(tmp)
        from ..render.html import REPORT_FILE, edit_html

        # Rendered from the written edit.json, so what `extra` added (the model's name) shows too.
        edit_dict = json.loads((tmp / EDIT_FILE).read_text(encoding="utf-8"))
        (tmp / REPORT_FILE).write_text(edit_html(edit_dict), encoding="utf-8")
    return out_dir
