"""Edit requests: one fact to rewrite (or retract), with the prompts that test it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


class InvalidRequestError(ValueError):
    pass


def to_template(prompt: str, subject: str, what: str = "prompt") -> str:
    """Normalise a prompt to a `{}` template: `{subject}`/`{}` slots, or the subject verbatim."""
    if "{subject}" in prompt:
        prompt = prompt.replace("{subject}", "{}")
    if "{}" in prompt:
        if prompt.count("{}") != 1:
            raise InvalidRequestError(f"{what}: the subject slot must appear once: {prompt!r}")
        return prompt
    if subject and subject in prompt:
        return prompt.replace(subject, "{}", 1)
    raise InvalidRequestError(f"{what}: subject {subject!r} not found in {prompt!r}")


@dataclass
class EditRequest:
    """Rewrite `subject`'s fact from `old_object` to `new_object`.

    prompt: the fact as a cloze prompt with a `{}`/`{subject}` slot or the subject verbatim.
    paraphrases: other phrasings used in training (optional).
    test_paraphrases: held-out phrasings, used only to measure generalisation.
    neighbourhood: prompts about other subjects whose answer must not change, as
      {"prompt": ..., "answer": ...}; the answer defaults to `old_object`.
    questions: question-form phrasings for chat models (optional).
    """

    subject: str
    prompt: str
    old_object: str
    new_object: str
    paraphrases: list[str] = field(default_factory=list)
    test_paraphrases: list[str] = field(default_factory=list)
    neighbourhood: list[dict] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    relation: str | None = None
    case_id: str | None = None

    def __post_init__(self) -> None:
        self.subject = (self.subject or "").strip()
        self.old_object = (self.old_object or "").strip()
        self.new_object = (self.new_object or "").strip()
        if not self.subject:
            raise InvalidRequestError("subject: must not be empty")
        if not self.old_object:
            raise InvalidRequestError("old_object: must not be empty")
        if not self.new_object:
            raise InvalidRequestError("new_object: must not be empty")
        if self.old_object.casefold() == self.new_object.casefold():
            raise InvalidRequestError(f"new_object: equals old_object ({self.old_object!r})")
        if not (self.prompt or "").strip():
            raise InvalidRequestError("prompt: must not be empty")
        self.prompt = to_template(self.prompt.rstrip(), self.subject)
        self.paraphrases = [to_template(p.rstrip(), self.subject, "paraphrases") for p in self.paraphrases]
        self.test_paraphrases = [
            to_template(p.rstrip(), self.subject, "test_paraphrases") for p in self.test_paraphrases
        ]
        cleaned = []
        for item in self.neighbourhood:
            if isinstance(item, str):
                item = {"prompt": item}
            if not item.get("prompt"):
                raise InvalidRequestError("neighbourhood: each entry needs a prompt")
            cleaned.append({"prompt": item["prompt"].rstrip(), "answer": item.get("answer") or self.old_object})
        self.neighbourhood = cleaned

    def fill(self, template: str, subject: str | None = None) -> str:
        return template.replace("{}", self.subject if subject is None else subject)

    @property
    def text(self) -> str:
        """The edit prompt with the subject filled in."""
        return self.fill(self.prompt)

    @property
    def training_prompts(self) -> list[str]:
        return [self.text] + [self.fill(p) for p in self.paraphrases]

    @property
    def held_out_prompts(self) -> list[str]:
        return [self.fill(p) for p in self.test_paraphrases]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EditRequest:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise InvalidRequestError(f"unknown field(s): {', '.join(sorted(unknown))}")
        missing = [f for f in ("subject", "prompt", "old_object", "new_object") if f not in data]
        if missing:
            raise InvalidRequestError(f"{missing[0]}: missing")
        return cls(**data)
