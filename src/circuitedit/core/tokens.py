"""Tokens and batches: prompt/target splits, chat rendering, padded batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

CLOZE = "cloze"
CHAT = "chat"
CHAT_INSTRUCTION = "Complete the sentence with the right words: {prompt}"


class TargetTokenizationError(ValueError):
    pass


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


def pad_rows(
    rows: Sequence[Sequence[int]], pad_id: int, side: str = "right", device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) long token ids and attention mask of `rows`, each padded with `pad_id` to the longest.

    side: "right" (rows start at position 0: teacher forcing, hidden states) or "left" (rows end
    at the last column: generation appends after every row's last token).
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        input_ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    if device is not None:
        input_ids, mask = input_ids.to(device), mask.to(device)
    return input_ids, mask


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
    input_ids, mask = pad_rows(rows_ids, pad, device=device)
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
    return TeacherForcedBatch(
        input_ids, mask, as_long(rows), as_long(positions),
        as_long(target_tokens), as_long(owners), as_long(last),
    )


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Leading tokens all `rows` share, leaving each row at least its last token."""
    limit = min(map(len, rows)) - 1
    n = 0
    while n < limit and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n
