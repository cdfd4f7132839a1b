"""Model scoring primitives: teacher-forced object log-probabilities and greedy continuations.

The LM head of small modern models is huge (Gemma-3: 262k tokens), so logits are computed only
at the positions a score or loss needs, on a contiguous 2-D hidden state.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .head_reductions import head_reductions, head_top

CLOZE = "cloze"
CHAT = "chat"
CHAT_INSTRUCTION = "Complete the sentence with the right words: {prompt}"


class TargetTokenizationError(ValueError):
    pass


def input_device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, prompt: str, form: str = CLOZE) -> str:
    """The text fed to the model: the prompt itself, or a user turn through the chat template."""
    if form == CLOZE:
        return prompt
    if not uses_chat_template(tokenizer):
        raise ValueError("question form needs a tokenizer with a chat template")
    question = prompt if prompt.rstrip().endswith("?") else CHAT_INSTRUCTION.format(prompt=prompt)
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids with the tokenizer's usual specials, unless the text already carries a BOS."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]


def join_target(prompt: str, target: str) -> str:
    if not prompt or prompt[-1].isspace() or target[:1] in (" ", ",", ".", "\n"):
        return prompt + target
    return prompt + " " + target


def prompt_and_target_ids(tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Split the tokenization of `prompt + target` into prompt ids and target ids.

    Tokenizing the joined text keeps the target's leading-space token the model would use.
    """
    prompt_ids = encode_text(tokenizer, prompt)
    full_ids = encode_text(tokenizer, join_target(prompt, target))
    cut = len(prompt_ids)
    # A merge across the boundary (rare) moves the split to the longest common prefix.
    while cut > 0 and full_ids[:cut] != prompt_ids[:cut]:
        cut -= 1
    target_ids = full_ids[cut:]
    if not target_ids:
        raise TargetTokenizationError(f"target {target!r} produces no tokens after {prompt!r}")
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in target_ids:
        raise TargetTokenizationError(f"the tokenizer cannot express target {target!r} (unknown token)")
    return full_ids[:cut], target_ids


@dataclass
class TeacherForcedBatch:
    """Right-padded sequences and the (row, position) pairs whose next token is a target."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    rows: torch.Tensor  # (N,) row of each scored position
    positions: torch.Tensor  # (N,) position whose logits predict the target token
    targets: torch.Tensor  # (N,) target token ids
    owners: torch.Tensor  # (N,) index of the (prompt, target) pair each position belongs to
    last_positions: torch.Tensor  # (B,) last prompt token of each row (before the target)


def padding_id(tokenizer) -> int:
    """The id that pads a batch (attention-masked, so any id works): the tokenizer's, else 0."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def build_batch(
    tokenizer, prompts: Sequence[str], targets: Sequence[str], device: torch.device | str = "cpu"
) -> TeacherForcedBatch:
    pairs = [prompt_and_target_ids(tokenizer, p, t) for p, t in zip(prompts, targets, strict=True)]
    return batch_from_ids(pairs, padding_id(tokenizer), device)


def batch_from_ids(
    pairs: Sequence[tuple[list[int], list[int]]], pad: int, device: torch.device | str = "cpu"
) -> TeacherForcedBatch:
    """The right-padded batch of (prompt ids, target ids) pairs."""
    rows_ids: list[list[int]] = []
    rows, positions, target_tokens, owners, last = [], [], [], [], []
    for i, (p_ids, t_ids) in enumerate(pairs):
        rows_ids.append(list(p_ids) + list(t_ids))
        for j, tok in enumerate(t_ids):
            rows.append(i)
            positions.append(len(p_ids) - 1 + j)
            target_tokens.append(tok)
            owners.append(i)
        last.append(len(p_ids) - 1)
    width = max(len(r) for r in rows_ids)
    input_ids = torch.full((len(rows_ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows_ids), width), dtype=torch.long)
    for i, seq in enumerate(rows_ids):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
    return TeacherForcedBatch(
        input_ids.to(device), mask.to(device), as_long(rows), as_long(positions),
        as_long(target_tokens), as_long(owners), as_long(last),
    )


def body(model: nn.Module) -> nn.Module:
    """The transformer without its LM head (Gemma3TextModel, GPT2Model, ...)."""
    return model.base_model


def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final-norm hidden states, (B, T, H). Right padding, so positions are 0..T-1 per row."""
    return body(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def logits_from_hidden(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """LM-head logits for a (N, H) selection of hidden states, in fp32."""
    head = model.get_output_embeddings()
    hidden = hidden.reshape(-1, hidden.shape[-1]).contiguous().to(head.weight.device)
    logits = head(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def selected_logits(model: nn.Module, batch: TeacherForcedBatch) -> torch.Tensor:
    """(N, V) logits at the batch's scored positions."""
    hidden = hidden_states(model, batch.input_ids, batch.attention_mask)
    return logits_from_hidden(model, hidden[batch.rows.to(hidden.device), batch.positions.to(hidden.device)])


@torch.no_grad()
def object_logprobs(
    model: nn.Module, tokenizer, prompts: Sequence[str], objects: Sequence[str], batch_size: int = 16
) -> torch.Tensor:
    """Summed log-probability of each object after its prompt (multi-token objects summed)."""
    device = input_device(model)
    scores: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        batch = build_batch(tokenizer, prompts[start:start + batch_size], objects[start:start + batch_size], device)
        hidden = hidden_states(model, batch.input_ids, batch.attention_mask)
        # Each target's log-probability from the head in chunks, never the (N, V) log-softmax.
        head = head_reductions(model, hidden[batch.rows.to(hidden.device), batch.positions.to(hidden.device)],
                               batch.targets[:, None])
        token_lp = head.log_probs()[:, 0]
        summed = torch.zeros(len(batch.last_positions), device=token_lp.device).index_add_(
            0, batch.owners.to(token_lp.device), token_lp
        )
        scores.append(summed.cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


@torch.no_grad()
def iter_last_token_hidden(
    model: nn.Module, tokenizer, prompts: Sequence[str], batch_size: int = 16, share_prefix: bool = False,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(indices into `prompts`, (len(indices), H) final hidden states at their last token) per batch.

    Prompts are batched by length, so short prompts are not padded to the longest one. With
    `share_prefix`, the leading tokens every prompt of a batch has in common (a filled template's
    BOS and "The") run once, and the rows continue from their keys and values.
    """
    device = input_device(model)
    encoded = [encode_text(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    pad = padding_id(tokenizer)
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        ids = [encoded[i] for i in indices]
        shared = common_prefix_length(ids) if share_prefix and len(ids) > 1 else 0
        rows = [r[shared:] for r in ids]
        width = max(map(len, rows))
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        if shared:
            hidden = continued_hidden_states(model, ids[0][:shared], input_ids, mask)
        else:
            hidden = hidden_states(model, input_ids, mask)
        last = torch.tensor([len(r) - 1 for r in rows], device=hidden.device)
        yield indices, hidden[torch.arange(len(ids), device=hidden.device), last]


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Leading tokens all `rows` share, leaving each row at least its last token."""
    limit = min(map(len, rows)) - 1
    n = 0
    while n < limit and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


def continued_hidden_states(model: nn.Module, prefix: Sequence[int], input_ids: torch.Tensor,
                            attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) final hidden states of right-padded rows that all follow the same `prefix`
    tokens; the prefix runs once and its keys and values serve every row."""
    core = body(model)
    prefix_ids = torch.tensor([list(prefix)], device=input_ids.device)
    keyword = cache_keyword(core)
    cache = getattr(core(input_ids=prefix_ids, attention_mask=torch.ones_like(prefix_ids), use_cache=True), keyword)
    mask = torch.cat([attention_mask.new_ones(input_ids.shape[0], len(prefix)), attention_mask], dim=1)
    if not hasattr(cache, "batch_repeat_interleave"):  # a legacy tuple cache: run the rows whole
        whole = torch.cat([prefix_ids.expand(input_ids.shape[0], -1), input_ids], dim=1)
        return hidden_states(model, whole, mask)[:, len(prefix):]
    cache.batch_repeat_interleave(input_ids.shape[0])
    positions = len(prefix) + torch.arange(input_ids.shape[1], device=input_ids.device)
    out = core(input_ids=input_ids, attention_mask=mask, position_ids=positions.expand(input_ids.shape[0], -1),
               use_cache=True, **{keyword: cache})
    return out.last_hidden_state


@torch.no_grad()
def last_token_logits(model: nn.Module, tokenizer, prompts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """(P, V) next-token logits after each prompt."""
    out: torch.Tensor | None = None
    for indices, hidden in iter_last_token_hidden(model, tokenizer, prompts, batch_size):
        logits = logits_from_hidden(model, hidden)
        if out is None:
            out = logits.new_empty(len(prompts), logits.shape[-1], device="cpu")
        out[indices] = logits.cpu()
    return out if out is not None else torch.zeros(0)


def cache_keyword(module: nn.Module) -> str:
    """The KV-cache argument's name: `cache` from transformers 5.x on, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


@dataclass
class GreedyOutput:
    texts: list[str]  # new text only
    first_margins: list[float]  # top-1 minus top-2 logit of the first generated token


def greedy_continuations(
    model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int = 8, batch_size: int = 16
) -> list[str]:
    """Greedy continuations (new text only) of already-rendered prompts."""
    return greedy_generate(model, tokenizer, prompts, max_new_tokens, batch_size).texts


@torch.no_grad()
def greedy_generate(
    model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int = 8, batch_size: int = 16,
    stop_at: Sequence[str | None] | None = None,
) -> GreedyOutput:
    """Greedy continuations of already-rendered prompts, with the first token's margin.

    A KV-cached loop over the transformer body, left padding with explicit position ids, and
    the LM head applied to one contiguous (B, H) state per step: faster on CPU than `generate`.

    stop_at: per prompt, an object (or None) whose settled appearance ends that prompt's
    continuation early: `contains_object` then gives what it gives on the full-length text. Rows
    that stop or reach EOS leave the batch, so the 262k-wide LM head runs on live rows only.
    """
    device = input_device(model)
    output = GreedyOutput([], [])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    control = special_token_ids(tokenizer)
    cache_kw = cache_keyword(body(model))
    stop_at = [None] * len(prompts) if stop_at is None else list(stop_at)
    for start in range(0, len(prompts), batch_size):
        ids = [encode_text(tokenizer, p) for p in prompts[start:start + batch_size]]
        stops = stop_at[start:start + batch_size]
        width = max(map(len, ids))
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in ids], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        past = None
        tokens: list[list[int]] = [[] for _ in ids]
        live = list(range(len(ids)))  # prompt index of each batch row
        finished: set[int] = set()
        for step in range(max_new_tokens):
            out = body(model)(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                              use_cache=True, **{cache_kw: past})
            past = getattr(out, cache_kw)
            # The argmax (and at the first token the top-2) of each row from the head in chunks,
            # never the (B, V) logits.
            top_index, top_values = head_top(model, out.last_hidden_state[:, -1], k=2 if step == 0 else 1)
            if step == 0:
                output.first_margins.extend((top_values[:, 0] - top_values[:, 1]).tolist())
            next_ids = top_index.to(device)
            for index, token in zip(live, next_ids.tolist(), strict=True):
                if index in finished:
                    continue
                if token in control or is_control_token(tokenizer, token):
                    finished.add(index)  # the end of the text: never shown, nothing follows it
                    continue
                tokens[index].append(token)
                stop = stops[index]
                if stop and names_object_settled(tokenizer.decode(tokens[index], skip_special_tokens=True), stop):
                    finished.add(index)
            if len(finished) == len(ids) or step == max_new_tokens - 1:
                break
            keep = [row for row, index in enumerate(live) if index not in finished]
            if len(keep) < len(live) and hasattr(past, "batch_select_indices"):
                keep_rows = torch.tensor(keep, device=device)
                past.batch_select_indices(keep_rows)
                live = [live[row] for row in keep]
                next_ids, positions, mask = next_ids[keep_rows], positions[keep_rows], mask[keep_rows]
            elif len(keep) < len(live):  # a cache without batch selection: finished rows are fed padding
                next_ids = torch.tensor([pad if index in finished else token
                                         for index, token in zip(live, next_ids.tolist(), strict=True)], device=device)
            input_ids = next_ids[:, None]
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(input_ids)], dim=1)
        output.texts.extend(tokenizer.batch_decode(tokens, skip_special_tokens=True))
    return output


# Markup tokens a vocabulary may hold as ordinary entries (Gemma-3's "<start_of_image>",
# "<end_of_turn>", "[multimodal]"): a continuation ends there like at EOS.
CONTROL_TOKEN = re.compile(r"<\|?\w*_\w*\|?>|<unused\d+>|\[[a-z_]+\]")


def special_token_ids(tokenizer) -> set[int]:
    """EOS, every special token and every added token the tokenizer marks special."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, added in tokenizer.added_tokens_decoder.items() if added.special)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def is_control_token(tokenizer, token_id: int) -> bool:
    """Whether a generated token is markup rather than text (see CONTROL_TOKEN)."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    return isinstance(piece, str) and CONTROL_TOKEN.fullmatch(piece) is not None


def _object_pattern(obj: str, settled: bool = False) -> str | None:
    needle = re.escape(obj.strip().casefold())
    if not needle:
        return None
    left = r"\b" if obj.strip()[:1].isalnum() else ""
    right = r"\b" if obj.strip()[-1:].isalnum() else ""
    if right and settled:
        right = r"(?=\W)"  # the character after the object is already there, and not a letter
    return left + needle + right


def contains_object(text: str, obj: str) -> bool:
    """Whether a continuation names the object (case-insensitive, on word boundaries)."""
    pattern = _object_pattern(obj)
    return pattern is not None and re.search(pattern, text.casefold()) is not None


def states_object(text: str, obj: str, subject: str | None = None) -> bool:
    """Whether a continuation gives the object as its answer: `contains_object`, except that a
    mention inside a repetition of a subject that itself names the object ("the 1986 Honda
    Prelude" for Honda) does not count."""
    if subject and contains_object(subject, obj):
        text = re.sub(re.escape(subject.strip()), " ", text, flags=re.IGNORECASE)
    return contains_object(text, obj)


def names_object_settled(text: str, obj: str) -> bool:
    """Whether `text` names the object so that no continuation of it can undo that
    ("Paris," yes; "Paris" no: it may go on as "Parisian")."""
    pattern = _object_pattern(obj, settled=True)
    return pattern is not None and re.search(pattern, text.casefold()) is not None
