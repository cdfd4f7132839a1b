"""Pinned numbers (in the manner of torchtune's recipe tests): one unlearn-then-learn edit and
attribution patching on tiny seeded fp32 models must give the numbers recorded here.

They guard behaviour through refactors of the package: a change that moves a per-step loss, a
step count or a component score fails here, however plausible its output looks. The values were
recorded once by running this code (at commit 1c25523, torch 1 thread, fp32); if a change is
meant to move them, record them again and say why in the commit. Only the public API is used.
"""

from __future__ import annotations

import pytest
import torch

from circuitedit import EditConfig, EditRequest, edit
from circuitedit.localize import LocalizeConfig, localize
from tiny import tiny_model

LOSS_TOLERANCE = dict(rtol=1e-4, atol=1e-5)
SCORE_TOLERANCE = dict(rtol=1e-4, atol=1e-6)  # some scores are ~1e-5: atol 1e-5 would let them go

REQUEST = EditRequest(subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of",
                      old_object="Paris", new_object="Rome",
                      paraphrases=["Tourists visit the Eiffel Tower in the city of"],
                      test_paraphrases=["The Eiffel Tower can be found in"])

# The same for both models (recorded after the answer-reading change of the metrics).
METRICS = {"new_fact_accuracy": 1.0, "train_paraphrase_accuracy": 1.0, "paraphrase_accuracy": 0.0,
           "forget_rate": 1.0, "old_fact_stated_before": 0.0, "efficacy": 1.0, "paraphrase_efficacy": 1.0}

# The defaults, except: both MLPs of the 2-layer model, and margins and learning rates a random
# model can reach in a few steps, so that a stage stops by the margin rule (llama's unlearn, both
# learns) as well as at max_steps (gemma3's unlearn). One generated prefix (the frozen-context
# path) and two same-template neighbours (the KL retain set) stay on.
CONFIG = {
    "method": "unlearn-then-learn",
    "localize": {"top_k": 2},
    "editor": {"unlearn": {"lr": 1.0, "margin": 0.0, "old_gap": 0.0, "max_steps": 30},
               "learn": {"lr": 0.3, "margin": 0.3, "old_gap": 0.0, "max_steps": 40},
               "n_prefixes": 1, "n_template_neighbours": 2},
    "evaluate": {"max_new_tokens": 3},
}

EDITS = {
    "llama": {
        "components": ["L0.MLP", "L1.MLP"],
        "after": ["Rome Xbox Mbappe", "Rome Putin C", "Juliet ! van"],
        "stages": [
            ("unlearn", 13, True, [
                6.9713759, 6.8637137, 6.7556081, 6.6473279, 6.5573781, 6.4794834, 6.425034,
                6.3772683, 6.344882, 6.3118906, 6.2844447, 6.2589353, 6.2437568,
            ]),
            ("learn", 7, True, [
                6.8702206, 6.580101, 6.3648022, 6.2134312, 6.1254328, 6.0977538, 6.0983052,
            ]),
        ],
    },
    "gemma3_text": {
        "components": ["L0.MLP", "L1.MLP"],
        "after": ["Rome Rome Rome", "Rome Rome Rome", "Games Games handful"],
        "stages": [
            ("unlearn", 30, False, [
                6.8422813, 6.6145992, 6.5238019, 6.4849034, 6.4394038, 6.4239433, 6.4013508,
                6.3620666, 6.3780722, 6.3640804, 6.3945932, 6.3371095, 6.3061301, 6.335652,
                6.3265761, 6.3232078, 6.3044115, 6.3001967, 6.3142232, 6.2878851, 6.2916729,
                6.2962739, 6.2964439, 6.2730145, 6.2715358, 6.2815737, 6.2747371, 6.2687303,
                6.2657308, 6.2760691,
            ]),
            ("learn", 11, True, [
                7.2291582, 6.8821981, 6.6060092, 6.4573018, 6.3778243, 6.3045726, 6.2863287,
                6.2172741, 6.2011887, 6.150601, 6.1255346,
            ]),
        ],
    },
}

ATTRIBUTION = {
    "llama": {
        "corruption": "subject swap: 'Michael Phelps'; subject swap: 'Marilyn Monroe'",
        "passes": 6,
        "scores": {
            "L0.H0@last": -4.4364948e-05, "L0.H0@subject": 0.003536536, "L0.H1@last": 0.0041264305,
            "L0.H1@subject": -0.0015614387, "L0.H2@last": 0.014477987, "L0.H2@subject": -0.014548146,
            "L0.H3@last": -0.023463621, "L0.H3@subject": -0.014751543, "L0.MLP@last": 0.0028335494,
            "L0.MLP@subject": -0.0061515555, "L1.H0@last": -0.041835126, "L1.H0@subject": 0.0,
            "L1.H1@last": -0.064200557, "L1.H1@subject": 0.0, "L1.H2@last": -0.011577478, "L1.H2@subject": 0.0,
            "L1.H3@last": -0.055275057, "L1.H3@subject": 0.0, "L1.MLP@last": -0.01778908,
            "L1.MLP@subject": 0.0,
        },
    },
    "gemma3_text": {
        "corruption": "subject swap: 'Rabindranath Tagore'; subject swap: 'Rabindranath Tagore'",
        "passes": 6,
        "scores": {
            "L0.H0@last": -0.025137996, "L0.H0@subject": -0.015697656, "L0.H1@last": -0.1124968,
            "L0.H1@subject": -0.053010761, "L0.H2@last": -0.14191598, "L0.H2@subject": -0.0097936215,
            "L0.H3@last": -0.069120808, "L0.H3@subject": -0.060467465, "L0.MLP@last": -0.065139871,
            "L0.MLP@subject": -0.028317845, "L1.H0@last": -0.039326108, "L1.H0@subject": 0.0,
            "L1.H1@last": -0.073538743, "L1.H1@subject": 0.0, "L1.H2@last": -0.068351396, "L1.H2@subject": 0.0,
            "L1.H3@last": -0.058501935, "L1.H3@subject": 0.0, "L1.MLP@last": -0.178583, "L1.MLP@subject": 0.0,
        },
    },
}


@pytest.mark.parametrize("family", list(EDITS))
def test_unlearn_then_learn_losses_and_steps_are_pinned(family):
    """Guards the training loop and the measurement: per stage, its step count, whether the margin
    rule stopped it, and the loss of every step of one unlearn-then-learn edit; then the edited
    model's greedy continuations (edit prompt, training and held-out paraphrase) and metrics."""
    model, tokenizer = tiny_model(family)
    torch.manual_seed(0)
    result = edit(model, tokenizer, REQUEST, EditConfig.from_dict(CONFIG), controls=[])
    pinned = EDITS[family]
    assert [c.name for c in result.components] == pinned["components"]
    got = [(s.name, s.steps, s.converged, len(s.losses)) for s in result.outcome.stages]
    assert got == [(name, steps, converged, steps) for name, steps, converged, _ in pinned["stages"]]
    for stage, (name, _, _, losses) in zip(result.outcome.stages, pinned["stages"], strict=True):
        torch.testing.assert_close(torch.tensor(stage.losses, dtype=torch.float64),
                                   torch.tensor(losses, dtype=torch.float64), **LOSS_TOLERANCE,
                                   msg=lambda m, name=name: f"{family} {name} losses: {m}")
    assert [row.after for row in result.rows] == pinned["after"]
    assert {k: result.metrics[k] for k in METRICS} == METRICS


@pytest.mark.parametrize("family", list(ATTRIBUTION))
def test_attribution_patching_scores_are_pinned(family):
    """Guards attribution patching: the corrupting subjects it picks, its pass count, and the
    score of every component at every position group."""
    model, tokenizer = tiny_model(family)
    torch.manual_seed(0)
    result = localize(model, tokenizer, REQUEST, LocalizeConfig(method="attribution"))
    pinned = ATTRIBUTION[family]
    assert (result.method, result.corruption, result.passes) == ("attribution", pinned["corruption"],
                                                                 pinned["passes"])
    scores = {f"{s.component.name}@{s.position}": s.score for s in result.scores}
    assert sorted(scores) == sorted(pinned["scores"])
    names = sorted(scores)
    torch.testing.assert_close(torch.tensor([scores[n] for n in names], dtype=torch.float64),
                               torch.tensor([pinned["scores"][n] for n in names], dtype=torch.float64),
                               **SCORE_TOLERANCE, msg=lambda m: f"{family} scores: {m}")
