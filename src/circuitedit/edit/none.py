"""`none`: no change at all. The sanity control: it must score the unedited model's numbers."""

from __future__ import annotations

from .base import EditOutcome, register


@register("none")
def no_edit(model, tokenizer, request, components, context, config, progress=None) -> EditOutcome:
    return EditOutcome(model=model, stages=[])


no_edit.uses_localization = False
