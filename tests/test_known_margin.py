"""F_control counts only facts the unedited model knew clearly, and never trains on them."""

from __future__ import annotations

from circuitedit.evaluate.facts import control_facts, subject_pool
from circuitedit.evaluate.metrics import edit_metrics, probe_rows
from circuitedit.evaluate.runner import Probe, Snapshot
from circuitedit.requests import EditRequest

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


def test_near_tie_controls_are_not_counted_as_known():
    probes, before, after = _snapshots()
    rows = probe_rows(REQUEST, probes, before, after, known_margin=1.0)
    metrics = edit_metrics(REQUEST, rows, before, after)
    # Norway was answered by a 0.2-logit near-tie: excluded; of Japan and Bees, one kept.
    assert metrics["control_known_before"] == 2 and metrics["control_near_ties_excluded"] == 1
    assert metrics["f_control"] == 0.5


def test_zero_margin_counts_every_correct_answer():
    probes, before, after = _snapshots()
    metrics = edit_metrics(REQUEST, probe_rows(REQUEST, probes, before, after, known_margin=0.0), before, after)
    assert metrics["control_known_before"] == 3 and metrics["f_control"] == 1 / 3


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
    from circuitedit.report import old_fact_note

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
