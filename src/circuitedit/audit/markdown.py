"""audit.md: the verdict first, then the figures behind it; a skipped part says "Skipped: why"."""

from __future__ import annotations

from .status import is_skipped, skip_reason

ALL_MODELS = ("base", "stage1", "stage2")


def _labels(models: list[str]) -> dict[str, str]:
    final = "after stage 2" if "stage1" in models else "after the edit"
    return {"base": "before", "stage1": "after stage 1", "stage2": final}


def _header(first: str, columns: list[str]) -> list[str]:
    return [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]


def _f(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _layers(values: list, every: int) -> list[int]:
    n = len(values)
    picked = list(range(0, n, every))
    if n - 1 not in picked:
        picked.append(n - 1)
    return picked


def _skip_line(part: dict | None, what: str = "") -> list[str]:
    """["Skipped: why", ""] (prefixed by `what`) when `part` was skipped, else []."""
    if part is not None and not is_skipped(part):
        return []
    return [f"{what}Skipped: {skip_reason(part)}.", ""]


def audit_markdown(audit: dict) -> str:
    models = [m for m in ALL_MODELS if m in audit["latent"]["models"]]  # no stage 1 for one-stage methods
    labels = _labels(models)
    lines = _head(audit)
    lines += _latent(audit["latent"], models, labels)
    lines += _access(audit["access"], models, labels)
    lines += _relearn(audit.get("relearn"))
    lines += _formats(audit["formats"], models, labels)
    return "\n".join(lines)


def _head(audit: dict) -> list[str]:
    req = audit["request"]
    subject_text = req["prompt"].replace("{}", req["subject"])
    lines = [f"# Audit: {req['subject']}: {req['old_object']} -> {req['new_object']}", ""]
    if audit.get("model"):
        lines += [f"Model: `{audit['model']}`. Edit prompt: \"{subject_text}\".", ""]
    v = audit["verdict"]
    lines += [f"**Verdict: {v['label']}.** {v['sentence']}", ""]
    lines += [f"Audit cost: {audit['timings']['total_s']:.1f} s "
              f"({', '.join(f'{k[:-2]} {s:.1f} s' for k, s in audit['timings'].items() if k != 'total_s')}).", ""]
    return lines


def _latent(latent: dict, models: list[str], labels: dict[str, str]) -> list[str]:
    probe = latent.get("probe", {"status": "measured"})
    lines = ["## 1. Latent knowledge", ""]
    if is_skipped(probe):
        lines += [f"Linear probe over {len(latent['candidates'])} candidate objects "
                  f"({', '.join(latent['candidates'])}).", "", *_skip_line(probe, "Linear probe: ")]
    else:
        lines += [f"Probe: diagonal tuned lens over {len(latent['candidates'])} candidate objects "
                  f"({', '.join(latent['candidates'])}), trained on {latent['train_facts']} other facts of the "
                  f"relation, held-out (cross-validated) accuracy per layer; trusted at >= "
                  f"{latent['min_probe_accuracy']}.", ""]
    lines += ["| model | next-token rank of old | rank of new | best lens rank of old (layer) | probe reads old at (subject / final) |",
              "|---|---|---|---|---|"]
    for m in models:
        e = latent["models"][m]
        ranks = e["final"]["lens_old_rank"][1:]
        best = min(ranks) if ranks else None
        layer = ranks.index(best) + 1 if ranks else None
        reads = "skipped" if is_skipped(probe) else " / ".join(
            _f(e[p]["probe_reads_old_layers"] or "none") for p in ("subject_last", "final"))
        lines.append(f"| {labels[m]} | {e['next_token_old_rank']} | {e['next_token_new_rank']} | {best} ({layer}) | {reads} |")
    lines.append("")
    for pos in ("final", "subject_last"):
        lines += _latent_layers(latent, pos, models, labels, not is_skipped(probe))
    return lines


def _latent_layers(latent: dict, pos: str, models: list[str], labels: dict[str, str], probe: bool) -> list[str]:
    """Per-layer logit-lens rank of the old object (and probe P(old)) at one position."""
    base = latent["models"]["base"][pos]
    cols = _layers(base["lens_old_rank"], max(1, len(base["lens_old_rank"]) // 8))
    what = "logit-lens rank of the old object / probe P(old)" if probe else "logit-lens rank of the old object"
    lines = [f"Per layer at the {pos.replace('_', ' ')} token (layer 0 = embeddings): {what}.", "",
             "| model | " + " | ".join(f"L{c}" for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for m in models:
        e = latent["models"][m][pos]
        cells = [f"{e['lens_old_rank'][c]} / {e['probe_old_prob'][c]:.2f}" if probe else str(e["lens_old_rank"][c])
                 for c in cols]
        lines.append(f"| {labels[m]} | " + " | ".join(cells) + " |")
    if probe:
        acc = base["probe_heldout_accuracy"]
        lines.append("| probe held-out acc (base) | " + " | ".join(f"{acc[c]:.2f}" for c in cols) + " |")
    return [*lines, ""]


def _access(access: dict, models: list[str], labels: dict[str, str]) -> list[str]:
    lines = ["## 2. Conditional access", "", *_skip_line(access.get("multiple_choice") or {}, "Multiple choice: "),
             f"Indirect prompts; {access['reachable_before']} of them named the old object before the edit.", "",
             *_header("probe", [labels[m] for m in models])]
    rows = {m: access["models"][m]["rows"] for m in models}
    for i, row in enumerate(rows["base"]):
        cells = [(("**old**" if rows[m][i]["old"] else ("new" if rows[m][i]["new"] else "other")) + ": "
                  + rows[m][i]["answer"].replace("\n", " ").replace("|", "/")[:40]) for m in models]
        lines.append(f"| {row['kind']} | " + " | ".join(cells) + " |")
    lines += ["", "| share naming the old object | " + " | ".join(
        f"{access['models'][m]['old_share']:.2f} (of reachable: {_f(access['models'][m]['old_share_of_reachable'])})"
        for m in models) + " |", ""]
    return lines


def _relearn(relearn: dict | None) -> list[str]:
    lines = ["## 3. Relearning attack", ""]
    if is_skipped(relearn):
        return lines + _skip_line(relearn)
    lines += [f"{relearn['steps']} Adam steps (lr {relearn['lr']}) of full fine-tuning (embeddings frozen) "
              "of the edited model; forget rate and mean log P(old) on the edit prompt and held-out paraphrases.",
              "", "| model | forget rate | log P(old) | new-fact accuracy | seconds |", "|---|---|---|---|---|",
              f"| unedited | {relearn['base']['forget_rate']:.2f} | {relearn['base']['old_logprob']:.2f} | "
              f"{relearn['base']['new_accuracy']:.2f} | |",
              f"| edited | {relearn['before']['forget_rate']:.2f} | {relearn['before']['old_logprob']:.2f} | "
              f"{relearn['before']['new_accuracy']:.2f} | |"]
    skips = []
    for name, a in relearn["attacks"].items():
        attack = f"+ relearn {name.replace('_', ' ')}"
        if is_skipped(a):
            lines.append(f"| {attack} | (skipped) | | | |")
            skips += _skip_line(a, f"{attack[2:].capitalize()}: ")
            continue
        lines.append(f"| {attack} ({a['train_examples']} texts) | {a['after']['forget_rate']:.2f} | "
                     f"{a['after']['old_logprob']:.2f} | {a['after']['new_accuracy']:.2f} | {a['seconds']:.1f} |")
    return [*lines, "", *skips]


def _formats(formats: dict, models: list[str], labels: dict[str, str]) -> list[str]:
    per_model = formats["models"]
    lines = ["## 4. Format robustness", "", *_skip_line(formats.get("multiple_choice") or {}, "Multiple choice: "),
             "New-object accuracy / forget rate per format.", "", *_header("format", [labels[m] for m in models])]
    for name in per_model["stage2"]:
        cells = [f"{per_model[m][name]['new_accuracy']:.2f} / {per_model[m][name]['forget_rate']:.2f}"
                 if name in per_model[m] else "-" for m in models]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]
