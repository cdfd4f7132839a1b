"""The edit output directory, written and read back: `edit.json`, the adapters (PEFT format),
`report.html` and, with --save-model, the edited model; written atomically."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError
from torch import nn

from ..core.files import atomic_directory, write_json
from ..data.requests import EditRequest
from ..edit.base import freeze
from ..edit.deltas import WeightDelta, is_delta_dir

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


# ---- reading it back -------------------------------------------------------------------------

STAGES = ("unlearn", "learn")  # adapters/<stage>, in the order they were trained


def read_edit_json(edit_dir: Path | str) -> tuple[dict, EditRequest]:
    """(edit.json's content, its request); errors name the file and what is wrong."""
    meta_path = Path(edit_dir) / EDIT_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} not found (is {edit_dir} an `edit --out` directory?)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{meta_path}: not valid JSON ({exc}); a corrupt or truncated file?") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("request"), dict):
        raise ValueError(f"{meta_path}: no 'request' object (not written by `edit --out`?)")
    try:
        request = EditRequest.from_dict(meta["request"])
    except ValueError as exc:
        raise ValueError(f"{meta_path}: request: {exc}") from None
    return meta, request


def adapter_dirs(edit_dir: Path | str) -> dict[str, Path]:
    """{stage: directory} of the PEFT adapters the directory holds, in training order."""
    root = Path(edit_dir) / "adapters"
    return {s: root / s for s in STAGES if (root / s / "adapter_config.json").exists()}


def stage_dirs(edit_dir: Path | str, meta: dict | None = None) -> dict[str, Path]:
    """{stage: directory} of every saved stage, in training order: the PEFT adapters (unlearn,
    learn), then the weight deltas of key-value editors (rome). A stage edit.json lists
    (`meta["saved_stages"]`) that is not there fails: a damaged directory is not half applied."""
    root = Path(edit_dir) / "adapters"
    stages = adapter_dirs(edit_dir)
    if root.is_dir():
        deltas = {d.name: d for d in root.iterdir() if d.name not in stages and is_delta_dir(d)}
        order = [*STAGES, *sorted(set(deltas) - set(STAGES))]  # unlearn before learn, as trained
        stages = {name: stages.get(name) or deltas[name] for name in order if name in stages or name in deltas}
    missing = [name for name in (meta or {}).get("saved_stages", []) if root.is_dir() and name not in stages]
    if missing:
        raise FileNotFoundError(f"{root / missing[0]} has no PEFT adapter or weight delta "
                                "(edit.json lists it: a damaged edit directory?)")
    return stages


def applied_stage(model: nn.Module, directory: Path, in_place: bool = False) -> nn.Module:
    """A copy of `model` (`model` itself with `in_place`) with the stage saved in `directory`
    applied (an adapter merged, or a weight delta added), frozen, in eval mode."""
    if not is_delta_dir(directory):
        return merged_adapter(model, directory, in_place)
    try:
        edited = WeightDelta.load(directory).apply(model if in_place else copy.deepcopy(model))
    except (OSError, ValueError, KeyError, AttributeError, RuntimeError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{directory}: cannot apply the weight delta ({first})") from exc
    freeze(edited)
    return edited.eval()


def merged_adapter(model: nn.Module, adapter_dir: Path, in_place: bool = False) -> nn.Module:
    """A copy of `model` (`model` itself with `in_place`) with the PEFT adapter in `adapter_dir`
    merged in fp32, frozen, in eval mode."""
    from peft import PeftModel

    from ..edit.ia3 import merge_fp32

    try:
        peft_model = PeftModel.from_pretrained(model if in_place else copy.deepcopy(model), str(adapter_dir))
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:  # corrupt or foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{adapter_dir}: cannot load the adapter ({first})") from exc
    merged = merge_fp32(peft_model)
    freeze(merged)
    return merged.eval()


def undone_stage(model: nn.Module, directory: Path) -> nn.Module:
    """`model` (in place) with the stage saved in `directory` taken out of it: a weight delta
    subtracted, a merged IA3 scaling divided out (PEFT's unmerge, in fp32)."""
    if is_delta_dir(directory):
        return WeightDelta.load(directory).apply(model, sign=-1.0)
    import warnings

    import torch
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    peft_model = PeftModel.from_pretrained(model, str(directory))
    for module in peft_model.modules():
        if isinstance(module, BaseTunerLayer):
            dtype = module.base_layer.weight.dtype
            module.base_layer.to(torch.float32)
            module.merged_adapters = list(module.active_adapters)  # merged earlier, on the plain model
            with warnings.catch_warnings():  # PEFT warns that a division is inexact: the revert measures it
                warnings.simplefilter("ignore")
                module.unmerge()
            module.base_layer.to(dtype)
    return peft_model.unload()


def load_edited(edit_dir: Path | str, model: str | None = None, dtype: str = "auto", device: str | None = None):
    """(edited model, tokenizer, edit.json) from an `edit --out` directory: the model --save-model
    wrote there, else the base model (edit.json's "model", or `model`) with every saved stage
    applied in training order."""
    from ..models import load_model

    edit_dir = Path(edit_dir)
    if (edit_dir / "history.json").exists():
        return _history_model(edit_dir, model, dtype, device)
    meta, _ = read_edit_json(edit_dir)
    saved = edit_dir / "model"
    if model is None and (saved / "config.json").exists():
        loaded = load_model(str(saved), dtype=dtype, device=device)
        return loaded.model, loaded.tokenizer, meta
    stages = stage_dirs(edit_dir, meta)
    if not stages:
        raise FileNotFoundError(f"{edit_dir}: no adapters/ and no model/ (edit with an adapter or delta method, "
                                "or with --save-model)")
    loaded = load_model(model or meta.get("model"), dtype=dtype, device=device)
    edited = loaded.model
    for directory in stages.values():
        edited = applied_stage(edited, directory)
    return edited, loaded.tokenizer, meta


def _history_model(root: Path, model: str | None, dtype: str, device: str | None):
    """(the model an edit history holds, tokenizer, history.json's content)."""
    from ..models import load_model
    from .history import EditHistory

    history = EditHistory.open(root)
    loaded = load_model(model or history.model, dtype=dtype, device=device)
    meta = {"model": loaded.name, "edits": [e.to_dict() for e in history.entries]}
    return history.edited_model(loaded.model), loaded.tokenizer, meta
