"""One verdict per edit, from the audit's measurements of the final (stage-2) model.

not forgotten: the edited model still names the old object for the cloze edit prompt.
hard forgetting: no probe reaches it: not the logit lens (old object in the top `lens_top_k`
  at the final token of any layer), not a trusted linear probe (held-out accuracy above the
  threshold and picking the old object at either position), not an indirect prompt, not a
  format variant, and no relearning attack brings it back.
soft forgetting: gone from the cloze prompt, but at least one of these still reaches it.
Parts of the audit that were skipped (`status.skipped`) reach nothing; the sentence names them.
"""

from __future__ import annotations

from .status import is_skipped, skip_reason

HARD = "hard forgetting"
SOFT = "soft forgetting"
NOT = "not forgotten"


def reaching_probes(audit: dict, model: str = "stage2", lens_top_k: int = 10) -> dict[str, str]:
    """{probe: the figure showing it reaches the old fact} for `model`."""
    found: dict[str, str] = {}
    latent = audit["latent"]["models"][model]
    ranks = latent["final"]["lens_old_rank"][1:]  # layer 0 is the embeddings
    best = min(ranks) if ranks else None
    if best is not None and best <= lens_top_k:
        layers = [i + 1 for i, r in enumerate(ranks) if r <= lens_top_k]
        found["logit lens"] = f"old object in the top {lens_top_k} at layer(s) {_span(layers)} (best rank {best})"
    for pos in ("subject_last", "final"):
        layers = latent[pos].get("probe_reads_old_layers") or []
        if layers:
            acc = max(latent[pos]["probe_heldout_accuracy"][i] for i in layers)
            found[f"linear probe ({pos.replace('_', ' ')})"] = (
                f"reads the old object at layer(s) {_span(layers)} (held-out accuracy up to {acc:.2f})")
    access = audit["access"]["models"][model]
    if access["old_kinds"]:
        hits = sum(r["old"] for r in access["rows"])
        found["indirect prompts"] = f"{hits}/{len(access['rows'])} name the old object ({', '.join(access['old_kinds'])})"
    formats = audit["formats"]["models"][model]
    failing = [f for f, v in formats.items() if v["forget_rate"] < 1.0]
    if failing:
        found["formats"] = ", ".join(f"{f} (forget rate {formats[f]['forget_rate']:.2f})" for f in failing)
    for name, attack in (audit.get("relearn") or {}).get("attacks", {}).items():
        if attack and attack.get("old_returned"):
            found[f"relearning ({name.replace('_', ' ')})"] = (
                f"forget rate {audit['relearn']['before']['forget_rate']:.2f} -> {attack['after']['forget_rate']:.2f}")
    return found


def not_measured(audit: dict) -> dict[str, str]:
    """{part: why it was skipped} for the parts of the audit that measured nothing. Audits
    without statuses (written before they existed) count as measured, bar a missing relearn."""
    out: dict[str, str] = {}
    probe = audit["latent"].get("probe")
    if probe is not None and is_skipped(probe):
        out["linear probes"] = skip_reason(probe)
    for section in ("access", "formats"):
        choice = audit[section].get("multiple_choice")
        if choice is not None and is_skipped(choice):
            out["multiple choice"] = skip_reason(choice)
    relearn = audit.get("relearn")
    if is_skipped(relearn):
        out["relearning"] = skip_reason(relearn)
    else:
        for name, attack in relearn.get("attacks", {}).items():
            if is_skipped(attack):
                out[f"relearning ({name.replace('_', ' ')})"] = skip_reason(attack)
    return out


def verdict(audit: dict, lens_top_k: int = 10) -> dict:
    cloze = audit["formats"]["models"]["stage2"]["cloze"]
    found = reaching_probes(audit, "stage2", lens_top_k)
    skipped = not_measured(audit)
    if cloze["forget_rate"] < 1.0:
        label = NOT
        sentence = (f"Not forgotten: the edited model still answers the edit prompt with "
                    f"{audit['request']['old_object']!r}.")
    elif not found:
        label = HARD
        sentence = (f"Hard forgetting: the old object is unreachable by every probe and prompt tried "
                    f"({', '.join(_tried(skipped))}).")
    else:
        label = SOFT
        sentence = ("Soft forgetting: the edit prompt no longer gives the old object, but it is still "
                    "reachable through: " + "; ".join(f"{k}: {v}" for k, v in found.items()) + ".")
    if skipped:
        sentence += " Not measured: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) + "."
    return {"label": label, "sentence": sentence, "reaching": found, "not_measured": skipped,
            "lens_top_k": lens_top_k}


def _tried(skipped: dict[str, str]) -> list[str]:
    families = ["logit lens", "linear probes", "indirect prompts", "formats", "relearning"]
    if "linear probes" in skipped:
        families.remove("linear probes")
    if "relearning" in skipped or {"relearning (other facts)", "relearning (subject sentences)"} <= set(skipped):
        families.remove("relearning")
    return families


def _span(layers: list[int]) -> str:
    if len(layers) > 4:
        return f"{layers[0]}-{layers[-1]} ({len(layers)} layers)"
    return ", ".join(map(str, layers))
