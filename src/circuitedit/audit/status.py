"""Every part of an audit says whether it was measured: `{"status": "measured", ...}` or
`{"status": "skipped", "reason": "..."}`. Sections (latent, access, formats, relearn) and their
parts (the latent probe, multiple choice, each relearning attack) all follow it."""

from __future__ import annotations

MEASURED = "measured"
SKIPPED = "skipped"


def measured(**figures) -> dict:
    return {"status": MEASURED, **figures}


def skipped(reason: str) -> dict:
    return {"status": SKIPPED, "reason": reason}


def is_skipped(part: dict | None) -> bool:
    """None (an older audit.json with the part missing) counts as skipped."""
    return part is None or part.get("status") == SKIPPED


def skip_reason(part: dict | None) -> str:
    return (part or {}).get("reason") or "not run"
