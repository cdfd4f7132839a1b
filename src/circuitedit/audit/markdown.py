"""audit.md: the verdict first, then the figures behind it."""

from __future__ import annotations

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


def audit_markdown(audit: dict) -> str:
    req = audit["request"]
    subject_text = req["prompt"].replace("{}", req["subject"])
    lines = [f"# Audit: {req['subject']}: {req['old_object']} -> {req['new_object']}", ""]
    if audit.get("model"):
        lines += [f"Model: `{audit['model']}`. Edit prompt: \"{subject_text}\".", ""]
    v = audit["verdict"]
    lines += [f"**Verdict: {v['label']}.** {v['sentence']}", ""]
    lines += [f"Audit cost: {audit['timings']['total_s']:.1f} s "
              f"({', '.join(f'{k[:-2]} {s:.1f} s' for k, s in audit['timings'].items() if k != 'total_s')}).", ""]

    latent = audit["latent"]
    models = [m for m in ALL_MODELS if m in latent["models"]]  # no stage 1 for one-stage methods
    labels = _labels(models)
    lines += ["## 1. Latent knowledge", "",
              f"Probe: diagonal tuned lens over {len(latent['candidates'])} candidate objects "
              f"({', '.join(latent['candidates'])}), trained on {latent['train_facts']} other facts of the "
              f"relation, held-out (cross-validated) accuracy per layer; trusted at >= {latent['min_probe_accuracy']}.",
              ""]
    lines += ["| model | next-token rank of old | rank of new | best lens rank of old (layer) | probe reads old at (subject / final) |",
              "|---|---|---|---|---|"]
    for m in models:
        e = latent["models"][m]
        ranks = e["final"]["lens_old_rank"][1:]
        best = min(ranks) if ranks else None
        layer = ranks.index(best) + 1 if ranks else None
        reads = " / ".join(_f(e[p]["probe_reads_old_layers"] or "none") for p in ("subject_last", "final"))
        lines.append(f"| {labels[m]} | {e['next_token_old_rank']} | {e['next_token_new_rank']} | {best} ({layer}) | {reads} |")
    lines.append("")
    n_layers = len(latent["models"]["base"]["final"]["lens_old_rank"])
    every = max(1, n_layers // 8)
    for pos in ("final", "subject_last"):
        cols = _layers(latent["models"]["base"][pos]["lens_old_rank"], every)
        lines += [f"Per layer at the {pos.replace('_', ' ')} token (layer 0 = embeddings): logit-lens rank of the old "
                  "object / probe P(old).", "",
                  "| model | " + " | ".join(f"L{c}" for c in cols) + " |", "|---|" + "---|" * len(cols)]
        acc = latent["models"]["base"][pos]["probe_heldout_accuracy"]
        for m in models:
            e = latent["models"][m][pos]
            cells = [f"{e['lens_old_rank'][c]} / {e['probe_old_prob'][c]:.2f}" for c in cols]
            lines.append(f"| {labels[m]} | " + " | ".join(cells) + " |")
        lines.append("| probe held-out acc (base) | " + " | ".join(f"{acc[c]:.2f}" for c in cols) + " |")
        lines.append("")

    access = audit["access"]
    lines += ["## 2. Conditional access", "",
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

    relearn = audit.get("relearn")
    lines += ["## 3. Relearning attack", ""]
    if relearn:
        lines += [f"{relearn['steps']} Adam steps (lr {relearn['lr']}) of full fine-tuning (embeddings frozen) "
                  "of the edited model; forget rate and mean log P(old) on the edit prompt and held-out paraphrases.",
                  "", "| model | forget rate | log P(old) | new-fact accuracy | seconds |", "|---|---|---|---|---|",
                  f"| unedited | {relearn['base']['forget_rate']:.2f} | {relearn['base']['old_logprob']:.2f} | "
                  f"{relearn['base']['new_accuracy']:.2f} | |",
                  f"| edited | {relearn['before']['forget_rate']:.2f} | {relearn['before']['old_logprob']:.2f} | "
                  f"{relearn['before']['new_accuracy']:.2f} | |"]
        for name, a in relearn["attacks"].items():
            if a is None:
                lines.append(f"| + relearn {name.replace('_', ' ')} | (not run: no training text without the edited fact) | | | |")
                continue
            lines.append(f"| + relearn {name.replace('_', ' ')} ({a['train_examples']} texts) | "
                         f"{a['after']['forget_rate']:.2f} | {a['after']['old_logprob']:.2f} | "
                         f"{a['after']['new_accuracy']:.2f} | {a['seconds']:.1f} |")
        lines.append("")
    else:
        lines += ["(skipped)", ""]

    formats = audit["formats"]["models"]
    names = list(formats["stage2"])
    lines += ["## 4. Format robustness", "", "New-object accuracy / forget rate per format.", "",
              *_header("format", [labels[m] for m in models])]
    for name in names:
        cells = [f"{formats[m][name]['new_accuracy']:.2f} / {formats[m][name]['forget_rate']:.2f}"
                 if name in formats[m] else "-" for m in models]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)
