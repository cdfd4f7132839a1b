"""Latent knowledge: does the residual stream still encode the old object?

Two readers, per layer, at two positions (the subject's last token and the prompt's final token):

logit lens: the residual after layer l, through the final norm and the LM head; the rank of the
  old object's first token in that next-token distribution (rank 1 = top). The last layer's rank
  at the final token is the model's own next-token rank of the old object.
probe: a diagonal "tuned lens" restricted to the relation's candidate objects. For layer l,
  score(h, o) = sum_i a_i * norm(h)_i * U[o]_i (U: the unembedding row of o's first token), one
  weight vector `a` per layer (init 1 = the logit lens over the candidates), trained with
  cross-entropy over the candidates on other facts of the same relation the model knows, with an
  L2 pull towards the init, and evaluated leave-one-out on those facts (held-out accuracy).
  Objects enter only through their unembedding, so it reads held-out facts whose object it never
  saw as a label. It is then applied to the edited subject: does it still pick the old object?
  It is trained on each model's own states (an attacker with white-box access to the edited
  model). Layers whose held-out accuracy is below `min_probe_accuracy` are not trusted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.forward import body, input_device, logits_from_hidden
from ..core.tokens import encode_text, pad_rows, padding_id, prompt_and_target_ids
from .status import MEASURED, measured, skipped

SUBJECT = "subject_last"
FINAL = "final"
POSITIONS = (SUBJECT, FINAL)


@dataclass(frozen=True)
class ProbeFact:
    """A cloze prompt, the subject inside it (for the subject position) and its object."""

    prompt: str
    subject: str
    answer: str


def final_norm(model: nn.Module) -> nn.Module:
    trunk = body(model)
    for name in ("norm", "ln_f", "final_layernorm"):
        if hasattr(trunk, name):
            return getattr(trunk, name)
    raise ValueError(f"no final norm found on {type(trunk).__name__}")


def subject_last_index(tokenizer, prompt: str, subject: str) -> int:
    """Index of the subject's last token in `prompt` (the final token if the subject is absent)."""
    ids = encode_text(tokenizer, prompt)
    at = prompt.find(subject)
    if at < 0 or not subject:
        return len(ids) - 1
    upto = len(encode_text(tokenizer, prompt[: at + len(subject)]))
    return max(0, min(upto, len(ids)) - 1)


@torch.no_grad()
def layer_states(model: nn.Module, tokenizer, facts: Sequence[ProbeFact], batch_size: int = 16) -> dict[str, torch.Tensor]:
    """{position: (N, L+1, H) fp32} final-normed residual states; index 0 = embeddings,
    index l = after layer l, the last one = the model's own final hidden state."""
    device = input_device(model)
    norm = final_norm(model)
    out: dict[str, list[torch.Tensor]] = {p: [] for p in POSITIONS}
    pad = padding_id(tokenizer)
    for start in range(0, len(facts), batch_size):
        chunk = facts[start:start + batch_size]
        ids = [encode_text(tokenizer, f.prompt) for f in chunk]
        input_ids, mask = pad_rows(ids, pad, device=device)
        result = body(model)(input_ids=input_ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        rows = torch.arange(len(chunk), device=device)
        index = {FINAL: torch.tensor([len(r) - 1 for r in ids], device=device),
                 SUBJECT: torch.tensor([subject_last_index(tokenizer, f.prompt, f.subject) for f in chunk], device=device)}
        for pos, where in index.items():
            layers = [norm(h[rows, where]) for h in result.hidden_states[:-1]]
            layers.append(result.last_hidden_state[rows, where])
            out[pos].append(torch.stack(layers, 1).float().cpu())
    return {p: torch.cat(v) for p, v in out.items()}


@torch.no_grad()
def lens_ranks(model: nn.Module, states: torch.Tensor, token: int) -> list[int]:
    """Rank (1 = top) of `token` in the logit-lens distribution of each layer; states (L+1, H)."""
    head = model.get_output_embeddings()
    logits = logits_from_hidden(model, states.to(head.weight.device, head.weight.dtype))
    target = logits[:, token : token + 1]
    return (logits > target).sum(-1).add(1).tolist()


def first_token(tokenizer, prompt: str, obj: str) -> int:
    return prompt_and_target_ids(tokenizer, prompt, obj)[1][0]


# ---- the probe ---------------------------------------------------------------------------------


def probe_scores(weights: torch.Tensor, states: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """weights (..., L, H), states (N, L, H), candidates (C, H) -> (..., N, L, C) scores."""
    return (states * weights.unsqueeze(-3)) @ candidates.T


def _scale(states: torch.Tensor, candidates: torch.Tensor) -> float:
    """Brings init scores to unit scale: sqrt(H) / (mean |state| * mean |candidate|)."""
    norms = states.norm(dim=-1).mean().clamp(min=1e-6) * candidates.norm(dim=-1).mean().clamp(min=1e-6)
    return float(states.shape[-1] ** 0.5 / norms)


def fit_probes(states: torch.Tensor, labels: torch.Tensor, candidates: torch.Tensor, train: torch.Tensor,
               steps: int = 150, lr: float = 0.05, l2: float = 1e-3) -> torch.Tensor:
    """Fit K probes at once, one per row of `train` (K, N) bool (the examples it trains on), each
    with one diagonal weight vector per layer. states (N, L, H), labels (N,) candidate indices,
    candidates (C, H). Returns (K, L, H) weights."""
    states, candidates = states.float(), candidates.float()
    scale = _scale(states, candidates)
    k, n_layers = train.shape[0], states.shape[1]
    delta = torch.zeros(k, n_layers, states.shape[2], requires_grad=True)
    if len(labels) == 0 or steps <= 0:
        return (1 + delta.detach()) * scale
    optimizer = torch.optim.Adam([delta], lr=lr)
    weight = train.float() / train.float().sum(1, keepdim=True).clamp(min=1)  # (K, N)
    target = labels[None, :, None].expand(k, -1, n_layers)  # (K, N, L)
    with torch.enable_grad():
        for _ in range(steps):
            scores = probe_scores((1 + delta) * scale, states, candidates)  # (K, N, L, C)
            loss = nn.functional.cross_entropy(scores.permute(0, 3, 1, 2), target, reduction="none")  # (K, N, L)
            loss = (loss * weight[..., None]).sum() + l2 * delta.pow(2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return ((1 + delta) * scale).detach()


def fit_probe(states: torch.Tensor, labels: torch.Tensor, candidates: torch.Tensor, steps: int = 150,
              lr: float = 0.05, l2: float = 1e-3) -> torch.Tensor:
    """One probe on all examples: (L, H) weights."""
    return fit_probes(states, labels, candidates, torch.ones(1, len(labels), dtype=torch.bool), steps, lr, l2)[0]


def probe_predict(weights: torch.Tensor, states: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(N, L, C) probabilities over the candidates."""
    return probe_scores(weights, states.float(), candidates.float()).softmax(-1)


def cross_validated_probe(states: torch.Tensor, labels: torch.Tensor, candidates: torch.Tensor,
                          steps: int = 150, folds: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """((L,) held-out accuracy, (L, H) weights fitted on all examples). Held-out: leave-one-out
    (folds=0) or k-fold; every fold and the final fit train together in one batched loop."""
    n = len(labels)
    k = n if folds <= 0 else min(folds, n)
    fold_of = torch.arange(n) % max(k, 1)
    train = torch.stack([fold_of != f for f in range(k)] + [torch.ones(n, dtype=torch.bool)]) if n else \
        torch.ones(1, 0, dtype=torch.bool)
    weights = fit_probes(states, labels, candidates, train, steps)
    if n < 2:
        return torch.zeros(states.shape[1]), weights[-1]
    picked = probe_scores(weights[:-1], states.float(), candidates.float()).argmax(-1)  # (K, N, L)
    test = ~train[:-1]  # (K, N)
    correct = ((picked == labels[None, :, None]) & test[..., None]).float().sum((0, 1))
    return correct / n, weights[-1]


def held_out_accuracy(states: torch.Tensor, labels: torch.Tensor, candidates: torch.Tensor,
                      steps: int = 150, folds: int = 0) -> torch.Tensor:
    """(L,) accuracy of the probe on facts it was not trained on."""
    return cross_validated_probe(states, labels, candidates, steps, folds)[0]


@dataclass
class ProbeData:
    facts: list[ProbeFact]
    labels: torch.Tensor  # (N,) index into candidates
    candidates: list[str]  # object names (first tokens distinct)
    candidate_tokens: list[int]


def probe_data(tokenizer, facts: Sequence[ProbeFact], extra_objects: Sequence[str], extra_prompt: str) -> ProbeData:
    """Candidates: every fact's object and `extra_objects` (tokenized after `extra_prompt`),
    deduplicated by first token."""
    names, tokens = [], []
    for obj, prompt in [*((f.answer, f.prompt) for f in facts), *((o, extra_prompt) for o in extra_objects)]:
        tok = first_token(tokenizer, prompt, obj)
        if tok not in tokens:
            names.append(obj)
            tokens.append(tok)
    labels = torch.tensor([tokens.index(first_token(tokenizer, f.prompt, f.answer)) for f in facts], dtype=torch.long)
    return ProbeData(list(facts), labels, names, tokens)


MIN_PROBE_FACTS = 2  # cross-validation needs a fact to hold out and one to train on


def probe_status(data: ProbeData) -> dict:
    n = len(data.facts)
    if n < MIN_PROBE_FACTS:
        return skipped(f"{n} other fact(s) of the relation to train the probe on (it needs {MIN_PROBE_FACTS})")
    return measured()


def latent_report(models: dict[str, nn.Module], tokenizer, edit_fact: ProbeFact, old_object: str,
                  new_object: str, train_facts: Sequence[ProbeFact], steps: int = 150,
                  min_probe_accuracy: float = 0.5, folds: int = 5) -> dict:
    """Logit-lens ranks and probe readings of the edited fact in each model (name -> model).
    With too few facts to train and test it on, the probe is skipped (its figures are empty lists)."""
    if any(f.subject.casefold() == edit_fact.subject.casefold() for f in train_facts):
        raise ValueError("probe training facts must not contain the edited subject")
    data = probe_data(tokenizer, train_facts, [old_object, new_object], edit_fact.prompt)
    old_tok = first_token(tokenizer, edit_fact.prompt, old_object)
    new_tok = first_token(tokenizer, edit_fact.prompt, new_object)
    probe = probe_status(data)
    report: dict = {"status": MEASURED, "candidates": data.candidates, "train_facts": len(data.facts),
                    "folds": folds, "min_probe_accuracy": min_probe_accuracy, "probe": probe, "models": {}}
    for name, model in models.items():
        edit_states = layer_states(model, tokenizer, [edit_fact])
        train_states = layer_states(model, tokenizer, data.facts) if probe["status"] == MEASURED else None
        entry: dict = {}
        for pos in POSITIONS:
            entry[pos] = {"lens_old_rank": lens_ranks(model, edit_states[pos][0], old_tok),
                          "lens_new_rank": lens_ranks(model, edit_states[pos][0], new_tok)}
            probe_figures = _no_probe() if train_states is None else _probe_figures(
                model, data, edit_states[pos], train_states[pos], (old_tok, new_tok), steps, min_probe_accuracy, folds)
            entry[pos].update(probe_figures)
        entry["next_token_old_rank"] = entry[FINAL]["lens_old_rank"][-1]
        entry["next_token_new_rank"] = entry[FINAL]["lens_new_rank"][-1]
        report["models"][name] = entry
    return report


def _no_probe() -> dict:
    return {key: [] for key in ("probe_heldout_accuracy", "probe_old_prob", "probe_new_prob", "probe_picks",
                                "probe_reads_old_layers", "trusted_layers")}


def _probe_figures(model: nn.Module, data: ProbeData, edit_states: torch.Tensor, train_states: torch.Tensor,
                   old_new: tuple[int, int], steps: int, min_probe_accuracy: float, folds: int) -> dict:
    """The probe trained (cross-validated) on `train_states`, read on the edited fact's states."""
    old_c, new_c = (data.candidate_tokens.index(t) for t in old_new)
    unembed = model.get_output_embeddings().weight.detach()[data.candidate_tokens].float().cpu()
    acc, weights = cross_validated_probe(train_states, data.labels, unembed, steps, folds)
    probs = probe_predict(weights, edit_states, unembed)[0]  # (L, C)
    picked = probs.argmax(-1)
    trusted = acc >= max(min_probe_accuracy, 1.0 / max(len(data.candidates), 1))
    return {
        "probe_heldout_accuracy": [round(float(a), 3) for a in acc],
        "probe_old_prob": [round(float(p), 4) for p in probs[:, old_c]],
        "probe_new_prob": [round(float(p), 4) for p in probs[:, new_c]],
        "probe_picks": [data.candidates[int(i)] for i in picked],
        "probe_reads_old_layers": [layer for layer in range(len(picked))
                                   if int(picked[layer]) == old_c and bool(trusted[layer])],
        "trusted_layers": [layer for layer in range(len(trusted)) if bool(trusted[layer])],
    }
