"""PromptScan: next-token statistics of many prompts, each run once, with shared leading tokens."""

from __future__ import annotations

import pytest
import torch

from circuitedit.core.forward import iter_last_token_hidden
from circuitedit.core.prompt_scan import PromptScan
from circuitedit.core.tokens import common_prefix_length
from tiny import FAMILIES, tiny_model

TEMPLATE = "The {} is located in the city of"
SUBJECTS = ["Eiffel Tower", "Colosseum", "Louvre museum", "Big Ben", "Alhambra palace in Granada"]


def full_logits(model, tokenizer, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokenizer(prompt)["input_ids"]])).logits[0, -1].float()


def test_common_prefix_leaves_every_row_a_token():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4, 5]]) == 2
    assert common_prefix_length([[1, 2], [1, 2, 3]]) == 1  # the shorter row keeps its last token
    assert common_prefix_length([[7, 2], [1, 2]]) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_gives_the_full_forward_states(family):
    model, tokenizer = tiny_model(family)
    prompts = [TEMPLATE.format(s) for s in SUBJECTS]
    def rows(share: bool) -> dict:  # two batches of the length-sorted prompts
        batches = iter_last_token_hidden(model, tokenizer, prompts, 3, share_prefix=share)
        return {i: row for idx, h in batches for i, row in zip(idx, h, strict=True)}

    rows_plain, rows_shared = rows(False), rows(True)
    assert sorted(rows_shared) == list(range(len(prompts)))
    for i in range(len(prompts)):
        assert torch.allclose(rows_shared[i].float(), rows_plain[i].float(), atol=1e-4)


@pytest.mark.parametrize("family", ["gemma3_text", "gpt2"])
def test_scan_matches_the_full_logits_and_runs_each_prompt_once(family, monkeypatch):
    model, tokenizer = tiny_model(family)
    watched = tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    scan = PromptScan(model, tokenizer, batch_size=2)
    prompts = [TEMPLATE.format(s) for s in SUBJECTS]
    stats = scan.stats(prompts[:3], watched)
    for row, prompt in enumerate(prompts[:3]):
        logits = full_logits(model, tokenizer, prompt)
        assert int(stats.top_token[row]) == int(logits.argmax())
        assert float(stats.top_logit[row]) == pytest.approx(float(logits.max()), abs=1e-4)
        assert float(stats.watched_logit[row]) == pytest.approx(float(logits[watched]), abs=1e-4)
        assert float(stats.lse[row]) == pytest.approx(float(logits.logsumexp(-1)), abs=1e-4)

    scored = []
    import circuitedit.core.prompt_scan as module

    original = module.iter_last_token_hidden

    def counting(model, tokenizer, prompts, *args, **kwargs):
        scored.extend(prompts)
        return original(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(module, "iter_last_token_hidden", counting)
    again = scan.stats(list(reversed(prompts)), watched)
    assert sorted(scored) == sorted(prompts[3:])  # the first three came from the memo
    assert torch.equal(again.top_token.flip(0)[:3], stats.top_token)
    assert scan.stats([], watched).lse.shape == (0,)


def test_localizer_and_hard_negatives_share_one_scan(eiffel, monkeypatch):
    from circuitedit.edit.training.prompts import same_template_prompts
    from circuitedit.localize.corruption import prepare_setup

    model, tokenizer = tiny_model("llama")
    pool = ["Colosseum", "Louvre museum", "Big Ben", "Kremlin", "Alhambra", "Acropolis", "Parthenon"]
    scan = PromptScan(model, tokenizer)
    calls = []
    original = scan.stats
    monkeypatch.setattr(scan, "stats", lambda prompts, watched: calls.append(list(prompts)) or original(prompts, watched))
    setup = prepare_setup(model, tokenizer, eiffel.prompt, eiffel, pool, scan=scan)
    alone = prepare_setup(model, tokenizer, eiffel.prompt, eiffel, pool)
    assert setup.corruption == alone.corruption and torch.equal(setup.corrupt_ids, alone.corrupt_ids)
    neighbours = same_template_prompts(model, tokenizer, eiffel, pool, count=2, scan=scan)
    assert neighbours == same_template_prompts(model, tokenizer, eiffel, pool, count=2)
    assert len(calls) == 2 and set(calls[0]) <= set(calls[1])  # the search's prompts are the scan's
    assert len(scan._memo) == len(calls[1])


def test_preloaded_stats_do_not_depend_on_what_is_asked_first_and_are_read_back_exactly(tmp_path, monkeypatch):
    from circuitedit.core import prompt_scan as module
    from circuitedit.core.reference_cache import ReferenceCache

    model, tokenizer = tiny_model("gemma3_text")
    model = model.float()
    watched = tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    prompts = [TEMPLATE.format(s) for s in SUBJECTS]
    whole = PromptScan(model, tokenizer, batch_size=2)
    whole.preload(prompts, watched)
    subset_first = PromptScan(model, tokenizer, batch_size=2)
    subset_first.preload(prompts, watched)
    expected = whole.stats(prompts, watched)
    # Asked for a subset in another order, a preloaded scan gives the preloaded numbers.
    picked = subset_first.stats(prompts[3:0:-1], watched)
    assert torch.equal(picked.lse, expected.lse[[3, 2, 1]])

    references = ReferenceCache(tmp_path).for_model(model)
    PromptScan(model, tokenizer, batch_size=2).preload(prompts, watched, references)
    monkeypatch.setattr(module, "iter_last_token_hidden", lambda *a, **k: pytest.fail("scanned again"))
    again = PromptScan(model, tokenizer, batch_size=2)
    again.preload(prompts, watched, ReferenceCache(tmp_path).for_model(model))
    back = again.stats(prompts, watched)
    for field in ("top_token", "top_logit", "watched_logit", "lse"):
        assert torch.equal(getattr(back, field), getattr(expected, field))
    other = PromptScan(model, tokenizer, batch_size=2)
    with pytest.raises(pytest.fail.Exception, match="scanned again"):  # another watched token is another entry
        other.preload(prompts, watched + 1, ReferenceCache(tmp_path).for_model(model))
