"""A training step costs about the same on every family, and a chat model's short rows are not
padded to its chat-rendered ones (issue 53: SmolLM2's chat rows, ~50 tokens with the system turn,
padded every training row to their width and made its steps more than twice Gemma's; docs/speed.md).

Measured: the floating-point operations (torch's FlopCounterMode: matmuls and attention, forward and
backward) of a step of an unlearn stage, and the rows and width of its forwards; no clock is read."""

from __future__ import annotations

import copy

import torch
from torch.utils.flop_counter import FlopCounterMode

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
STEPS = 8  # one period of StageConfig.full_vocab_every, so every case counts the same full-vocabulary passes
CHAT = "llama, chat template"
FAMILY_RATIO = 3.0  # the families span ~1.4x (their heads' and attention's shapes): 3x is one gone wrong
CHAT_RATIO = 6.0  # its own 2 rows of ~130 tokens make it ~4.5x; padding every row to them (issue 53) ~9.4x


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


def stage_flops(model, tokenizer, context, config: EditorConfig, steps: int) -> int:
    """FLOPs of an unlearn stage of `steps` steps on both MLPs of a fresh copy."""
    working = copy.deepcopy(model)
    freeze(working)
    stage = copy.deepcopy(config.unlearn)
    stage.min_steps = stage.max_steps = steps
    counter = FlopCounterMode(display=False)
    with counter:
        _, log = ia3_stage("unlearn", working, tokenizer, [Component(0, MLP), Component(1, MLP)],
                           [TARGET] * len(context.prompts), context, stage, config, starts_at_reference=True)
    assert log.steps == steps
    return counter.get_total_flops()


def test_a_step_costs_about_the_same_on_every_family_and_in_chat_form():
    """The same request on every family, and on llama with a chat template: the FLOPs of a step
    (those of 2 * STEPS steps less those of STEPS, over STEPS: the stage's setup cancels) are
    within FAMILY_RATIO (CHAT_RATIO for the chat case) of the cheapest case's."""
    config = EditorConfig(n_prefixes=2, n_template_neighbours=2)
    cases = {family: tiny_model(family) for family in FAMILIES}
    cases[CHAT] = chat_model()
    per_step = {}
    for name, (model, tokenizer) in cases.items():
        context = build_context(model, tokenizer, REQUEST, config)
        flops = [stage_flops(model, tokenizer, context, config, steps) for steps in (STEPS, 2 * STEPS)]
        per_step[name] = (flops[1] - flops[0]) // STEPS
    cheapest = min(per_step.values())
    costly = {name: f"{flops / cheapest:.1f}x" for name, flops in per_step.items()
              if flops > (CHAT_RATIO if name == CHAT else FAMILY_RATIO) * cheapest}
    assert not costly, f"per-step FLOPs against the cheapest case: {costly} (all: {per_step})"
