"""ROME against the edited layer: does localization choose the right MLP for a keyed edit?

    python benchmarks/keyed_layers.py ../shared/data/counterfact/counterfact-rome-train.json \
        [--facts 20] [--layers 0-17:2] [--out runs/keyed-layers] [--model M]

CounterFact facts the model states (greedy continuation contains the true object), in file
order. Each fact is edited by ROME at every layer of --layers on the unedited model (the layer's
down projection restored after each), and once at the layer each localizer ranks first:
attribution patching (the editor's default, row "localized") and causal tracing (ROME's own,
row "traced"). Per edit, CounterFact's three scores: efficacy P(new) > P(old) on the
edit prompt, paraphrase P(new) > P(old) on its paraphrase prompts, neighbourhood P(true) >
P(new) on its neighbourhood prompts (unedited: the same on the unedited model). Prints a
markdown table (means over facts) and writes OUT/layers.png; OUT/results.jsonl makes it
resumable (a rerun skips every (fact, layer) it holds). The key covariance of every layer is
computed once (one pass over the sampled corpus) and cached.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from circuitedit import load_model
from circuitedit.core.forward import object_logprobs
from circuitedit.core.generate import greedy_continuations
from circuitedit.core.matching import contains_object
from circuitedit.data.datasets import load_requests
from circuitedit.edit.base import EditorConfig, TrainingContext
from circuitedit.edit.covariance import CorpusSpec, layer_covariances
from circuitedit.edit.rome import rome
from circuitedit.edit.training.prompts import generated_prefixes, training_prompts
from circuitedit.localize import LocalizeConfig, localize
from circuitedit.models import MLP, Component, get_adapter
from circuitedit.workflows.bench.measures import neighbourhood_specificity

SCORES = ("efficacy", "paraphrase", "neighbourhood")


def known_facts(model, tokenizer, requests, count: int):
    kept = []
    for start in range(0, len(requests), 32):
        chunk = requests[start:start + 32]
        texts = greedy_continuations(model, tokenizer, [r.text for r in chunk], 10)
        kept += [r for r, t in zip(chunk, texts, strict=True) if contains_object(t, r.old_object)]
        if len(kept) >= count:
            return kept[:count]
    return kept


def wins(model, tokenizer, prompts: list[str], new: str, old: str) -> float:
    lp = object_logprobs(model, tokenizer, prompts * 2, [new] * len(prompts) + [old] * len(prompts))
    return float((lp[: len(prompts)] > lp[len(prompts):]).float().mean())


def scores(model, tokenizer, request) -> dict:
    return {"efficacy": wins(model, tokenizer, [request.text], request.new_object, request.old_object),
            "paraphrase": wins(model, tokenizer, request.held_out_prompts, request.new_object, request.old_object),
            "neighbourhood": neighbourhood_specificity(model, tokenizer, request)}


LOCALIZERS = {"localized": "attribution", "traced": "causal-tracing"}  # row label -> localizer


def localized_layer(model, tokenizer, request, method: str = "attribution") -> int:
    """The MLP `method` ranks first at the subject tokens (attribution: the editor's default;
    causal tracing: ROME's own choice)."""
    config = LocalizeConfig(method=method)
    result = localize(model, tokenizer, request, config)
    mlps = [c for c in result.select_by(config, get_adapter(model).num_layers(model)) if c.kind == MLP]
    return mlps[0].layer


def edit_at(model, tokenizer, request, layer: int, prompts: list[str], config: EditorConfig) -> dict:
    """ROME at `layer`, measured, then the layer's weight restored exactly."""
    name = f"{get_adapter(model).mlp_out_name(layer)}.weight"
    saved = model.get_parameter(name).detach().clone()
    context = TrainingContext(prompts=prompts, retain=None, old_token=0)
    tick = time.perf_counter()
    outcome = rome(model, tokenizer, request, [Component(layer, MLP)], context, config)
    seconds = time.perf_counter() - tick
    result = {**scores(model, tokenizer, request), "seconds": seconds, "value_steps": outcome.stages[0].steps}
    with torch.no_grad():
        model.get_parameter(name).copy_(saved)
    return result


def parse_layers(text: str, num_layers: int) -> list[int]:
    """"" (every layer), "0-11", "0-17:2" (every second) or "0,4,8"."""
    if not text:
        return list(range(num_layers))
    if "," in text:
        return sorted({int(x) for x in text.split(",")})
    span, _, step = text.partition(":")
    low, _, high = span.partition("-")
    return list(range(int(low), int(high or low) + 1, int(step or 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--facts", type=int, default=20)
    parser.add_argument("--layers", default="", help="e.g. 0-11, 0-17:2 or 0,4,8 (default: every layer)")
    parser.add_argument("--out", type=Path, default=Path("runs/keyed-layers"))
    parser.add_argument("--model", default=None)
    args = parser.parse_args()

    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    layers = parse_layers(args.layers, get_adapter(model).num_layers(model))
    facts = known_facts(model, tokenizer, load_requests(args.data, "counterfact-rome"), args.facts)
    config = EditorConfig()
    tick = time.perf_counter()
    layer_covariances(model, tokenizer, layers, CorpusSpec(config.keyed.covariance_tokens), progress=print)
    print(f"key covariance of layers {layers[0]}-{layers[-1]}: {time.perf_counter() - tick:.0f} s (0 when cached)")
    prefixes = generated_prefixes(model, tokenizer, config.n_prefixes, seed=config.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.jsonl"
    rows = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []
    done = {(r["case_id"], r["layer"]) for r in rows}
    for request in facts:
        prompts = [p for p in training_prompts(request, prefixes) if request.subject in p]
        todo = [("unedited", None), *[(str(layer), layer) for layer in layers], *[(k, None) for k in LOCALIZERS]]
        for label, layer in todo:
            if (request.case_id, label) in done:
                continue
            if label == "unedited":
                row = scores(model, tokenizer, request)
            else:
                if label in LOCALIZERS:
                    layer = localized_layer(model, tokenizer, request, LOCALIZERS[label])
                row = {**edit_at(model, tokenizer, request, layer, prompts, config), "edited_layer": layer}
            row.update(case_id=request.case_id, layer=label, subject=request.subject)
            rows.append(row)
            with results_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
            print(f"{request.subject[:24]:24} {label:>9}: " + " ".join(f"{k} {row[k]:.2f}" for k in SCORES
                                                                        if row.get(k) is not None))
    report(rows, [str(layer) for layer in layers], args.out)


def report(rows: list[dict], layers: list[str], out: Path) -> None:
    labels = ["unedited", *layers, *LOCALIZERS]
    table = {label: [r for r in rows if r["layer"] == label] for label in labels}
    print(f"\n{len(table['unedited'])} facts; means over facts (P(new) > P(old), neighbourhood P(true) > P(new))\n")
    print("| layer | facts | efficacy | paraphrase | neighbourhood | seconds per edit |")
    print("|---|---:|---:|---:|---:|---:|")
    means = {}
    for label in labels:
        group = table[label]
        if not group:
            continue
        means[label] = {k: statistics.fmean(r[k] for r in group if r.get(k) is not None) for k in SCORES}
        seconds = statistics.fmean(r["seconds"] for r in group) if "seconds" in group[0] else None
        cells = " | ".join(f"{means[label][k]:.3f}" for k in SCORES)
        print(f"| {label} | {len(group)} | {cells} | {'-' if seconds is None else f'{seconds:.1f}'} |")
    for label, method in LOCALIZERS.items():
        if table[label]:
            print(f"\nlayers {method} chose: {sorted(r['edited_layer'] for r in table[label])}")
    plot(means, layers, out / "layers.png")


def plot(means: dict, layers: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [int(layer) for layer in layers if layer in means]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in SCORES:
        ax.plot(xs, [means[str(x)][key] for x in xs], marker="o", label=key)
        for label, style in (("localized", ":"), ("traced", "-.")):
            if label in means:
                ax.axhline(means[label][key], linestyle=style, linewidth=1, color=ax.lines[-1].get_color(),
                           label=f"{key}, {LOCALIZERS[label]}'s layer")
    if "unedited" in means:
        ax.axhline(means["unedited"]["neighbourhood"], color="black", linestyle="--", linewidth=1,
                   label="neighbourhood, unedited")
    ax.set_xlabel("edited MLP layer (ROME)")
    ax.set_ylabel("mean over facts")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
