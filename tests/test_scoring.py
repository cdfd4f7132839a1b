"""Scoring primitives: prompt/target split, teacher-forced log-probs, greedy decoding, matching."""

from __future__ import annotations

import pytest
import torch

from circuitedit.core.forward import last_token_logits, object_logprobs
from circuitedit.core.generate import greedy_continuations
from circuitedit.core.matching import contains_object
from circuitedit.core.tokens import (
    TargetTokenizationError,
    build_batch,
    join_target,
    pad_rows,
    prompt_and_target_ids,
)
from tiny import FAMILIES, tiny_model

PROMPT = "The Eiffel Tower is located in the city of"


def test_prompt_and_target_ids_split(tokenizer):
    prompt_ids, target_ids = prompt_and_target_ids(tokenizer, PROMPT, "Paris")
    assert prompt_ids == tokenizer(PROMPT)["input_ids"]
    assert prompt_ids[0] == tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens(target_ids) == ["Paris"]
    prompt_ids2, target_ids = prompt_and_target_ids(tokenizer, PROMPT, "Rome , Berlin")
    assert prompt_ids2 == prompt_ids
    assert tokenizer.convert_ids_to_tokens(target_ids) == ["Rome", ",", "Berlin"]
    assert prompt_ids + target_ids == tokenizer(PROMPT + " Rome , Berlin")["input_ids"]
    # A prompt that already carries the BOS gets no second one.
    with_bos = prompt_and_target_ids(tokenizer, "<bos>" + PROMPT, "Paris")
    assert with_bos == (prompt_ids, prompt_and_target_ids(tokenizer, PROMPT, "Paris")[1])


def test_prompt_and_target_ids_errors(tokenizer):
    with pytest.raises(TargetTokenizationError, match="cannot express target 'Zanzibar'"):
        prompt_and_target_ids(tokenizer, PROMPT, "Zanzibar")
    with pytest.raises(TargetTokenizationError, match="produces no tokens"):
        prompt_and_target_ids(tokenizer, PROMPT, "")


def test_join_target():
    assert join_target("in the city of", "Paris") == "in the city of Paris"
    assert join_target("in the city of ", "Paris") == "in the city of Paris"
    assert join_target("Paris", ", France") == "Paris, France"
    assert join_target("", "Paris") == "Paris"


class MergingTokenizer:
    """Greedy longest-match over a tiny vocabulary in which "of P" is one token, so the
    prompt's last token merges with the target's first one across the boundary."""

    vocab = {"<bos>": 0, "of P": 1, "of": 2, " ": 3, "P": 4, "aris": 5, "city": 6}
    bos_token = "<bos>"
    unk_token_id = None

    def __call__(self, text, add_special_tokens=True):
        ids = [0] if add_special_tokens else []
        while text:
            piece = max((p for p in self.vocab if text.startswith(p)), key=len)
            ids.append(self.vocab[piece])
            text = text[len(piece):]
        return {"input_ids": ids}


def test_prompt_and_target_split_moves_to_common_prefix_on_a_boundary_merge():
    prompt_ids, target_ids = prompt_and_target_ids(MergingTokenizer(), "city of", "Paris")
    assert prompt_ids == [0, 6, 3]  # "<bos> city ' '": "of" merged into the target's first token
    assert target_ids == [1, 5]


def test_pad_rows_pads_either_side_with_a_matching_mask():
    rows = [[5, 6, 7], [], [8]]
    ids, mask = pad_rows(rows, 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 0], [8, 0, 0]] and ids.dtype == torch.long
    assert mask.tolist() == [[1, 1, 1], [0, 0, 0], [1, 0, 0]] and mask.dtype == torch.long
    ids, mask = pad_rows(rows, 9, side="left", device="cpu")
    assert ids.tolist() == [[5, 6, 7], [9, 9, 9], [9, 9, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match="side"):
        pad_rows(rows, 0, side="middle")


def test_build_batch_positions(tokenizer):
    batch = build_batch(tokenizer, [PROMPT, "Michael Jordan plays"], ["Rome , Berlin", "tennis"])
    n_prompt = len(tokenizer(PROMPT)["input_ids"])
    assert batch.input_ids.shape == (2, n_prompt + 3)
    assert batch.attention_mask[1].tolist() == [1] * 5 + [0] * (n_prompt - 2)  # right padding
    assert batch.rows.tolist() == [0, 0, 0, 1]
    assert batch.positions.tolist() == [n_prompt - 1, n_prompt, n_prompt + 1, 3]
    assert batch.owners.tolist() == [0, 0, 0, 1]
    assert batch.last_positions.tolist() == [n_prompt - 1, 3]
    for row, pos, target in zip(batch.rows, batch.positions, batch.targets, strict=True):
        assert batch.input_ids[row, pos + 1] == target  # the next token of a scored position


@pytest.mark.parametrize("family", FAMILIES)
def test_object_logprobs_equal_a_manual_full_forward(family):
    model, tokenizer = tiny_model(family)
    prompts = [PROMPT, "Michael Jordan plays the sport of", "Paris"]
    objects = ["Rome , Berlin", "basketball", "is the capital of France"]
    got = object_logprobs(model, tokenizer, prompts, objects, batch_size=2)  # two batches, padding
    expected = []
    with torch.no_grad():
        for prompt, obj in zip(prompts, objects, strict=True):
            ids = tokenizer(prompt + " " + obj)["input_ids"]
            n_prompt = len(tokenizer(prompt)["input_ids"])
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            expected.append(sum(logp[pos - 1, ids[pos]].item() for pos in range(n_prompt, len(ids))))
    assert got.shape == (3,)
    assert got.tolist() == pytest.approx(expected, abs=1e-4)

    last = last_token_logits(model, tokenizer, prompts, batch_size=2)
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            full = model(input_ids=torch.tensor([tokenizer(prompt)["input_ids"]])).logits[0, -1].float()
            assert torch.allclose(last[row], full, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_continuations_match_generate(family):
    model, tokenizer = tiny_model(family)
    prompts = [PROMPT, "Michael Jordan plays"]  # different lengths: left padding in one batch
    got = greedy_continuations(model, tokenizer, prompts, max_new_tokens=4)
    for prompt, text in zip(prompts, got, strict=True):
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert text == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize(
    ("text", "obj", "expected"),
    [
        (" Paris, the capital", "Paris", True),
        (" paris is nice", "Paris", True),
        (" PARIS.", "Paris", True),
        (" Parisian food", "Paris", False),
        (" in Comparison", "Paris", False),
        (" New York City", "New York", True),
        (" New Yorker", "New York", False),
        (" Yorkshire", "York", False),
        (" I code in C++ daily", "C++", True),
        (" the U.S. team", "U.S.", True),
        (" the US team", "U.S.", False),
        (" basketball", "ball", False),
        (" anything", "", False),
        (" anything", "   ", False),
        ("", "Paris", False),
    ],
)
def test_contains_object_word_boundaries(text, obj, expected):
    assert contains_object(text, obj) is expected


@pytest.mark.parametrize(
    ("text", "obj", "expected"),
    [
        (" Paris, the capital", "Paris", True),
        (" Paris", "Paris", False),  # may still become "Parisian"
        (" Parisian", "Paris", False),
        (" New York City", "New York", True),
        (" C++", "C++", True),  # nothing after a non-letter can undo the match
        ("", "Paris", False),
    ],
)
def test_names_object_settled_only_when_no_continuation_can_undo_it(text, obj, expected):
    from circuitedit.core.matching import names_object_settled

    assert names_object_settled(text, obj) is expected
    if expected:
        assert all(contains_object(text + more, obj) for more in ("", "ian", " and", "x y"))


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_stop_at_ends_a_row_early_and_leaves_the_others(family):
    """A row stopped at its object keeps a prefix of its full continuation that still names the
    object; the rows that go on (after the batch shrinks) continue exactly as before."""
    from circuitedit.core.generate import greedy_generate
    from circuitedit.core.matching import names_object_settled

    model, tokenizer = tiny_model(family)
    prompts = [PROMPT, "Michael Jordan plays", "The capital of France is"]
    full = greedy_generate(model, tokenizer, prompts, max_new_tokens=8).texts
    words = [w for w in full[0].split() if w.isalnum()]
    stop = next((w for w in words if names_object_settled(full[0], w)), None)
    if stop is None:
        pytest.skip(f"no settled word in the random continuation {full[0]!r}")
    short = greedy_generate(model, tokenizer, prompts, max_new_tokens=8, stop_at=[stop, None, None]).texts
    assert full[0].startswith(short[0]) and len(short[0]) < len(full[0])
    assert contains_object(short[0], stop)
    assert short[1:] == full[1:]


def test_greedy_continuations_end_at_markup_tokens_and_never_show_them(monkeypatch):
    """Gemma-3's vocabulary holds "<start_of_image>" as an ordinary entry: a continuation ends
    there like at EOS, and neither token is printed."""
    from circuitedit.core import generate as scoring

    model, tokenizer = tiny_model("llama")
    tokenizer.add_tokens(["<start_of_image>"])  # not special: an ordinary vocabulary entry
    model.resize_token_embeddings(len(tokenizer))
    script = [tokenizer.convert_tokens_to_ids(t) for t in ("Rome", "<start_of_image>", "Paris")]
    calls = iter(range(len(script)))

    def scripted_top(model, hidden, k=1):
        token = script[next(calls)]
        return torch.full((hidden.shape[0],), token), torch.tensor([[2.0, 1.0][:k]] * hidden.shape[0])

    monkeypatch.setattr(scoring, "head_top", scripted_top)
    assert greedy_continuations(model, tokenizer, [PROMPT], max_new_tokens=3) == ["Rome"]


@pytest.mark.parametrize(("piece", "control"), [("<start_of_image>", True), ("<end_of_turn>", True),
                                               ("<|im_end|>", True), ("<unused7>", True), ("[multimodal]", True),
                                               ("<b>", False), ("▁Paris", False), ("Rome", False)])
def test_markup_tokens_are_told_from_text(piece, control):
    from circuitedit.core.generate import CONTROL_TOKEN

    assert (CONTROL_TOKEN.fullmatch(piece) is not None) is control
