"""Which prompts a localizer scores: the edit prompt and (optionally) its paraphrases."""

from __future__ import annotations

from ..core.prompt_scan import PromptScan
from ..data.facts import subject_pool
from .corruption import LocalizationError, PatchingSetup, prepare_setup


def localization_setups(model, tokenizer, request, config, scan: PromptScan | None = None) -> list[PatchingSetup]:
    templates = [request.prompt] + (list(request.paraphrases) if config.use_paraphrases else [])
    pool = subject_pool()
    setups = []
    for template in templates:
        try:
            setups.append(prepare_setup(model, tokenizer, template, request, pool, config.noise_scale, config.seed,
                                        scan=scan))
        except LocalizationError:
            if template == request.prompt:
                raise
    return setups
