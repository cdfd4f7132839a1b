"""Causal tracing (Meng et al. 2022, ROME): corrupt the subject with embedding noise, then restore
one clean activation at a time and record how much of the old object's probability comes back.

For every layer and every subject token and the last token, one restored run each for the layer's
hidden state (residual stream after the layer), its MLP output, its whole attention output and
each of its heads. The indirect effect is IE = p_restored(old) - p_corrupted(old).

Component scores (heads and MLPs): position group "subject" holds the largest-|IE| over the
subject tokens, "last" the IE at the final token. The per-token traces of hidden states, MLPs and
attention (the ROME picture) of the edit prompt go to `details["trace"]`.
"""


from __future__ import annotations

import torch
from torch import nn

from ..core.forward import hidden_states, logits_from_hidden
from ..models.components import HEAD, MLP, Component
from ..models.hooks import layer_output_hooks, row_patcher, site_hooks
from .base import ComponentScore, LocalizationResult, LocalizeConfig, register
from .corruption import FactPrompt
from .runner import NOISED, PromptScores, run_per_prompt

BATCH_SIZE = 32
HIDDEN = "hidden"
ATTN = "attn"


def answer_prob(model: nn.Module, prompt: FactPrompt, ids: torch.Tensor) -> torch.Tensor:
    """(B,) probability of the answer's first token after the prompt."""
    hidden = hidden_states(model, ids, torch.ones_like(ids))
    logits = logits_from_hidden(model, hidden[:, prompt.last_position])
    return torch.softmax(logits, dim=-1)[:, prompt.answer_token]


@torch.no_grad()
def trace_prompt(model, adapter, prompt: FactPrompt, batch_size: int = BATCH_SIZE) -> PromptScores:
    """Restore every (site, token) of one prompt; component scores, passes spent, the trace."""
    num_layers, num_heads = adapter.num_layers(model), adapter.num_heads(model)
    width = adapter.head_dim(model)
    clean_sites: dict = {}
    clean_hidden: dict = {}

    def capture_site(site, act):
        clean_sites[site] = act.detach()

    def capture_hidden(layer, hidden):
        clean_hidden[layer] = hidden.detach()

    with site_hooks(model, adapter, capture_site), layer_output_hooks(model, adapter, capture_hidden):
        p_clean = answer_prob(model, prompt, prompt.ids)[0].item()
    with prompt.noised(model):
        p_corrupt = answer_prob(model, prompt, prompt.ids)[0].item()
    passes = 2

    positions = prompt.subject_positions + [prompt.last_position]
    jobs = []  # (what, layer, head, position)
    for layer in range(num_layers):
        for pos in positions:
            jobs.append((HIDDEN, layer, None, pos))
            jobs.append((MLP, layer, None, pos))
            jobs.append((ATTN, layer, None, pos))
            jobs.extend((HEAD, layer, h, pos) for h in range(num_heads))

    effects: dict = {}
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        site_rows: dict = {}
        hidden_rows: dict = {}
        for row, (what, layer, head, pos) in enumerate(chunk):
            if what == HIDDEN:
                hidden_rows.setdefault(layer, []).append((row, pos))
            else:
                dims = slice(head * width, (head + 1) * width) if what == HEAD else slice(None)
                site = (layer, MLP if what == MLP else HEAD)
                site_rows.setdefault(site, []).append((row, pos, dims))

        restore_site = row_patcher(site_rows, clean_sites)

        def restore_hidden(layer, hidden, hidden_rows=hidden_rows):
            if layer not in hidden_rows:
                return None
            hidden = hidden.clone()
            for row, pos in hidden_rows[layer]:
                hidden[row, pos] = clean_hidden[layer][0, pos]
            return hidden

        ids = prompt.ids.expand(len(chunk), -1)
        with prompt.noised(model), \
                site_hooks(model, adapter, restore_site), layer_output_hooks(model, adapter, restore_hidden):
            probs = answer_prob(model, prompt, ids)
        passes += 1
        for job, value in zip(chunk, probs.tolist(), strict=True):
            effects[job] = value - p_corrupt

    scores: list[ComponentScore] = []
    for layer in range(num_layers):
        comps = [(Component(layer, HEAD, h), HEAD, h) for h in range(num_heads)] + [(Component(layer, MLP), MLP, None)]
        for comp, what, head in comps:
            subject = [effects[(what, layer, head, p)] for p in prompt.subject_positions]
            scores.append(ComponentScore(comp, "subject", max(subject, key=abs)))
            scores.append(ComponentScore(comp, "last", effects[(what, layer, head, prompt.last_position)]))
    trace = {
        "p_clean": p_clean, "p_corrupt": p_corrupt, "positions": positions,
        "subject_positions": prompt.subject_positions,
        **{what: [[effects[(what, layer, None, p)] for p in positions] for layer in range(num_layers)]
           for what in (HIDDEN, MLP, ATTN)},
    }
    return PromptScores(scores, passes, trace)


@register("causal-tracing")
def causal_tracing(model, tokenizer, request, config: LocalizeConfig, scan=None) -> LocalizationResult:
    def details(prompts: list[FactPrompt], traces: list[dict]) -> dict:
        trace = traces[0]  # the edit prompt's, with its tokens
        ids = prompts[0].ids[0].tolist()
        trace["tokens"] = [tokenizer.decode([ids[p]]) for p in trace["positions"]]
        trace["prompt"] = request.fill(prompts[0].template)
        return {"metric": "p(old object) restored - corrupted", "p_clean": [t["p_clean"] for t in traces],
                "p_corrupt": [t["p_corrupt"] for t in traces], "trace": trace}

    return run_per_prompt("causal-tracing", model, tokenizer, request, config, trace_prompt, prompts=NOISED,
                          corruption=f"subject noise x{config.noise_scale} embedding std (seed {config.seed})",
                          details=details)
