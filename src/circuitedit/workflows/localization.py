"""`circuitedit localize` as a library call: rank the components that carry a request's fact with
the edit's own localizer and scan (so it selects what an edit would train), the record the
command prints (localization.json), and its output directory."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from ..core.files import atomic_directory, write_json
from ..core.generate import greedy_continuations
from ..core.matching import contains_object
from ..core.reference_cache import ReferenceCache
from ..data.requests import EditRequest
from ..localize import LocalizationResult, get_localizer, localize
from ..models.arch import get_adapter
from ..models.components import Component
from .outputs import LOCALIZATION_FILE
from .pipeline import EditConfig, preloads_template_scan, template_scan


@dataclass
class Localization:
    """A localization as `circuitedit localize` reports it: the localizer's result, the components
    the edit's selection picks, and `data`, the record it prints and writes."""

    result: LocalizationResult
    selected: list[Component]
    data: dict


def ranked_rows(result: LocalizationResult, kinds: str = "both", positions: str = "all",
                max_layer: int | None = None) -> list[dict]:
    """One row per component, ranked as the selection ranks them: the position group (of those
    counted) of its largest |score|, signed."""
    best: dict = {}
    for item in result.scores:
        if item.counts_for(positions) and (item.component not in best or abs(item.score) > abs(best[item.component].score)):
            best[item.component] = item
    return [{**best[comp].to_dict(), "rank": rank}
            for rank, (comp, _score) in enumerate(result.ranked(kinds, positions, max_layer), 1)]


def localize_request(model: nn.Module, tokenizer, request: EditRequest, edit_config: EditConfig,
                     references: ReferenceCache | None = None, model_name: str = "") -> Localization:
    """Localize `request` on the unedited `model` as an edit under `edit_config` would, and check
    (as the edit does) whether the model states the old object on the prompt. references: where
    the template scan's rows are kept (None: memory only)."""
    config = edit_config.localize
    adapter = get_adapter(model)
    num_layers = adapter.num_layers(model)
    scan = None
    if get_localizer(config.method).reads_scan and preloads_template_scan(edit_config):
        # The same scan an edit reads, so the corrupting subject is the one an edit would pick
        # (and an edit of this template afterwards reads it back from the cache).
        scan = template_scan(model, tokenizer, request, None if references is None else references.for_model(model))
    result = localize(model, tokenizer, request, config, scan)
    # As the edit checks it: does the unedited model state the old object on this prompt?
    said = greedy_continuations(model, tokenizer, [request.text], edit_config.evaluate.max_new_tokens)[0]
    selected = result.select_by(config, num_layers)
    data = {
        "model": model_name, "subject": request.subject, "prompt": request.text, "old_object": request.old_object,
        "paraphrases": [request.fill(p) for p in request.paraphrases], "localizer": config.method,
        "config": asdict(config),
        "num_layers": num_layers, "num_heads": adapter.num_heads(model),
        "selected": [c.name for c in selected],
        "ranked": ranked_rows(result, config.kinds, config.positions, config.max_layer(num_layers)),
        "localization": result.to_dict(),
        "continuation": said, "old_object_given": contains_object(said, request.old_object),
    }
    return Localization(result, selected, data)


def write_localization(localization: Localization, out: Path) -> Path:
    """localization.json, heatmap.png and (causal tracing) causal_trace.png in `out`, atomically;
    the record then names the directory ("out")."""
    from ..render.plots import causal_trace_figure, localization_heatmap

    data, result = localization.data, localization.result
    with atomic_directory(out, marker=LOCALIZATION_FILE) as tmp:
        write_json(tmp / LOCALIZATION_FILE, data)
        title = f"{data['localizer']}: {data['prompt']} -> {data['old_object']}  [{data['model']}]"
        localization_heatmap(result, tmp / "heatmap.png", num_layers=data["num_layers"],
                             num_heads=data["num_heads"], selected=localization.selected, title=title)
        if "trace" in result.details:
            causal_trace_figure(result.details["trace"], tmp / "causal_trace.png", title=title)
    data["out"] = str(out)
    return out
