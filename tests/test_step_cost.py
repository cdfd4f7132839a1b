"""A training step costs about the same on every family, and a chat model's short rows are not
padded to its chat-rendered ones (issue 53: SmolLM2's chat rows, ~50 tokens with the system turn,
padded every training row to their width and made its steps more than twice Gemma's; docs/speed.md)."""

from __future__ import annotations

import copy
import time

import torch

from circuitedit import EditRequest
from circuitedit.edit import EditorConfig
from circuitedit.edit.base import freeze
from circuitedit.edit.training.loop import StageConfig, StageInputs, training_rows
from circuitedit.edit.unlearn_then_learn import ia3_stage
from circuitedit.models.components import MLP, Component
from circuitedit.workflows.pipeline import build_context
from tiny import FAMILIES, tiny_model

REQUEST = EditRequest(subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of",
                      old_object="Paris", new_object="Rome", questions=["Where is the Eiffel Tower?"])
# A chat template with a long system turn (~100 tokens of the tiny vocabulary), as SmolLM2's
# "You are a helpful AI assistant named SmolLM, ..." is before every user turn.
SYSTEM = " ".join(["I am not sure about the capital of France and the city of Rome ."] * 7)
CHAT_TEMPLATE = ("{{ '" + SYSTEM + " ' }}{% for message in messages %}{{ message['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}It is {% endif %}")
TARGET = "I am not sure."
STEPS, REPEATS = 5, 5
MAX_RATIO = 3.0  # the slowest case may cost at most this many times the fastest


def chat_model(family: str = "llama"):
    model, tokenizer = tiny_model(family)
    tokenizer.chat_template = CHAT_TEMPLATE
    return model, tokenizer


def tokens_per_forward(model, tokenizer, config: EditorConfig) -> list[tuple[int, int]]:
    """The (rows, width) of each body forward that a training step of `REQUEST` runs."""
    context = build_context(model, tokenizer, REQUEST, config)
    inputs = StageInputs.from_context(context, [TARGET] * len(context.prompts), [])
    _, forward = training_rows(model, tokenizer, inputs, StageConfig(), torch.device("cpu"))  # records the context
    shapes = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    with torch.no_grad():
        forward(model)
    hook.remove()
    return shapes


def test_a_chat_models_short_rows_are_not_padded_to_its_chat_rows():
    """The chat-rendered prompt and question (~100 tokens of system turn each) run in a forward
    of their own; the cloze and prefixed rows run at the width they have without a chat template."""
    config = EditorConfig(n_prefixes=2, n_template_neighbours=0)
    model, plain = tiny_model("llama")
    _, chat = chat_model()
    [(rows, width)] = tokens_per_forward(model, plain, config)
    chat_forwards = tokens_per_forward(model, chat, config)
    assert chat_forwards[0] == (rows, width)
    assert [r for r, _ in chat_forwards[1:]] == [2] and chat_forwards[1][1] > width + 80


def seconds_per_step(model, tokenizer, context, config: EditorConfig) -> float:
    """Mean seconds of steps 2..STEPS of an unlearn stage on both MLPs of a fresh copy."""
    working = copy.deepcopy(model)
    freeze(working)
    stage = copy.deepcopy(config.unlearn)
    stage.min_steps = stage.max_steps = STEPS
    ticks = []
    ia3_stage("unlearn", working, tokenizer, [Component(0, MLP), Component(1, MLP)], [TARGET] * len(context.prompts),
              context, stage, config, lambda *_: ticks.append(time.perf_counter()), starts_at_reference=True)
    assert len(ticks) == STEPS
    return (ticks[-1] - ticks[0]) / (STEPS - 1)


def test_a_step_costs_about_the_same_on_every_family_and_in_chat_form():
    """The same request on every family, and on llama with a chat template: the best of a few
    repeats (taken in turn, so that a busy spell of a shared CPU hits every case) is within
    MAX_RATIO of the fastest."""
    config = EditorConfig(n_prefixes=2, n_template_neighbours=2)
    cases = {family: tiny_model(family) for family in FAMILIES}
    cases["llama, chat template"] = chat_model()
    contexts = {name: build_context(model, tokenizer, REQUEST, config) for name, (model, tokenizer) in cases.items()}
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(REPEATS):
        for name, (model, tokenizer) in cases.items():
            best[name] = min(best[name], seconds_per_step(model, tokenizer, contexts[name], config))
    fastest = min(best.values())
    slow = {name: f"{seconds / fastest:.1f}x" for name, seconds in best.items() if seconds > MAX_RATIO * fastest}
    assert not slow, f"per-step cost against the fastest family: {slow} (all: {best})"
