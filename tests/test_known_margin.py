"""F_control counts every control fact the unedited model stated (the margin-filtered figure is a
second column), and never trains on them; forget checks read the answer, not the subject."""

from __future__ import annotations

import pytest

from circuitedit.data.facts import control_facts, subject_pool
from circuitedit.data.requests import EditRequest
from circuitedit.evaluate.metrics import edit_metrics, probe_rows
from circuitedit.evaluate.snapshots import Probe, Snapshot

REQUEST = EditRequest(subject="Eiffel Tower", prompt="The {} is located in the city of",
                      old_object="Paris", new_object="Rome")


def _snapshots():
    probes = [Probe("edit", REQUEST.text, "Rome"),
              Probe("control", "The capital of Japan is", "Tokyo"),
              Probe("control", "The capital of Norway is", "Oslo"),
              Probe("control", "Bees make", "honey")]
    before = Snapshot(continuations={("edit", REQUEST.text): " Paris, France",
                                     ("control", "The capital of Japan is"): " Tokyo.",
                                     ("control", "The capital of Norway is"): " Oslo.",
                                     ("control", "Bees make"): " honey."},
                      margins={("control", "The capital of Japan is"): 2.5,
                               ("control", "The capital of Norway is"): 0.2,
                               ("control", "Bees make"): 1.5})
    after = Snapshot(continuations={("edit", REQUEST.text): " Rome, Italy",
                                    ("control", "The capital of Japan is"): " Tokyo.",
                                    ("control", "The capital of Norway is"): " Bergen.",
                                    ("control", "Bees make"): " wax."})
    return probes, before, after


def test_f_control_counts_every_stated_fact_and_the_clear_column_filters_near_ties():
    probes, before, after = _snapshots()
    metrics = edit_metrics(REQUEST, probe_rows(REQUEST, probes, before, after, known_margin=1.0), before, after)
    # Three facts stated, two lost (Norway by a 0.2-logit near-tie, Bees clearly): 1 of 3 kept.
    assert metrics["control_stated_before"] == 3 and metrics["control_lost"] == 2
    assert metrics["f_control"] == 1 / 3
    # The second column leaves the near-tie (Norway) out: Japan kept, Bees lost.
    assert metrics["control_clear_before"] == 2 and metrics["f_control_clear"] == 0.5


def test_zero_margin_makes_the_clear_column_the_headline():
    probes, before, after = _snapshots()
    metrics = edit_metrics(REQUEST, probe_rows(REQUEST, probes, before, after, known_margin=0.0), before, after)
    assert metrics["f_control_clear"] == metrics["f_control"] == 1 / 3


HONDA = EditRequest(subject="Honda Prelude", prompt="{} is a product of", old_object="Honda",
                    new_object="Toyota", test_paraphrases=["{}, developed by"])


@pytest.mark.parametrize(("after", "forgotten", "forgotten_strict"), [
    (" the 1986 Honda Prelude. It", True, False),  # repeats the subject only
    (" Honda, the Japanese maker", False, False),  # gives the old object
    (" Toyota, not Honda Prelude", True, False),
    (" Toyota.", True, True),
])
def test_forget_reads_the_answer_not_a_repetition_of_the_subject(after, forgotten, forgotten_strict):
    probes = [Probe("edit", HONDA.text, "Toyota")]
    before = Snapshot(continuations={("edit", HONDA.text): " Honda, a Japanese company"})
    later = Snapshot(continuations={("edit", HONDA.text): after})
    metrics = edit_metrics(HONDA, probe_rows(HONDA, probes, before, later), before, later)
    assert metrics["forget_rate"] == float(forgotten)
    assert metrics["forget_rate_strict"] == float(forgotten_strict)
    assert metrics["old_fact_stated_before"] == 1.0


def test_a_new_object_inside_the_subject_is_not_a_new_fact_stated():
    request = EditRequest(subject="Google Map Maker", prompt="{} was developed by", old_object="Microsoft",
                          new_object="Google", test_paraphrases=["The makers of {} are"])
    text = request.held_out_prompts[0]
    probes = [Probe("test_paraphrase", text, "Google")]
    before = Snapshot(continuations={("test_paraphrase", text): " Microsoft."})
    after = Snapshot(continuations={("test_paraphrase", text): " the team behind Google Map Maker"})
    metrics = edit_metrics(request, probe_rows(request, probes, before, after), before, after)
    assert metrics["paraphrase_accuracy"] == 0.0 and metrics["paraphrase_accuracy_strict"] == 1.0


def test_subject_pool_never_names_a_control_fact_subject():
    """The pool feeds the KL neighbours: a pool entity inside a control prompt would protect
    that control fact directly and inflate F_control."""
    for subject in subject_pool():
        for fact in control_facts():
            assert subject.casefold() not in fact.prompt.casefold(), (subject, fact.prompt)


def test_stated_paraphrase_metrics_count_only_phrasings_that_gave_the_old_fact():
    stated, silent = "Tourists visit the Eiffel Tower in the city of", "Where is the Eiffel Tower? It is"
    probes = [Probe("edit", REQUEST.text, "Rome"), Probe("test_paraphrase", stated, "Rome"),
              Probe("test_paraphrase", silent, "Rome")]
    before = Snapshot(continuations={("edit", REQUEST.text): " Paris", ("test_paraphrase", stated): " Paris.",
                                     ("test_paraphrase", silent): " a tall tower."})
    after = Snapshot(continuations={("edit", REQUEST.text): " Rome", ("test_paraphrase", stated): " Rome.",
                                    ("test_paraphrase", silent): " a tall tower."})
    metrics = edit_metrics(REQUEST, probe_rows(REQUEST, probes, before, after), before, after)
    assert metrics["paraphrase_accuracy"] == 0.5  # every held-out phrasing
    assert metrics["paraphrase_accuracy_stated"] == 1.0  # only where the old fact was said
    assert metrics["forget_rate"] == 1.0 and metrics["forget_rate_stated"] == 1.0


def test_old_fact_stated_before_and_the_note_when_the_model_never_said_it():
    from circuitedit.render.tables import old_fact_note

    probes = [Probe("edit", REQUEST.text, "Rome"), Probe("test_paraphrase", "Tourists visit the Eiffel Tower in", "Rome")]
    said = Snapshot(continuations={("edit", REQUEST.text): " Paris, France",
                                   ("test_paraphrase", "Tourists visit the Eiffel Tower in"): " the summer."})
    unsaid = Snapshot(continuations={("edit", REQUEST.text): " a big city",
                                     ("test_paraphrase", "Tourists visit the Eiffel Tower in"): " the summer."})
    after = Snapshot(continuations={("edit", REQUEST.text): " Rome"})
    for before, share, warned in ((said, 0.5, False), (unsaid, 0.0, True)):
        rows = probe_rows(REQUEST, probes, before, after)
        metrics = edit_metrics(REQUEST, rows, before, after)
        assert metrics["old_fact_stated_before"] == share and metrics["forget_rate"] == 1.0
        note = old_fact_note({"request": REQUEST.to_dict(), "rows": [r.to_dict() for r in rows]})
        assert (note is not None) == warned
        if warned:
            assert "'Paris'" in note and "a big city" in note
