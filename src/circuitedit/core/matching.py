"""Whether a continuation names an object (as a word, as the answer, settled)."""

from __future__ import annotations

import re


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
