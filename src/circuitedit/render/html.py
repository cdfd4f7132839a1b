"""Self-contained HTML reports for `edit --out` (report.html), `bench --out` (summary.html) and
`audit` (audit.html): inline CSS, images as base64 data URIs, no scripts, no external resources.

Pure rendering from the same dicts the JSON files hold; every text is escaped with html.escape.
"""

from __future__ import annotations

import base64
import tempfile
from html import escape
from pathlib import Path

from .tables import METRIC_LABELS, changed_fact_rows, old_fact_note, unchanged_summary

REPORT_FILE = "report.html"

# One sentence per metric; the edit, bench and audit pages all read their definitions here.
METRIC_DEFINITIONS = {
    "new_fact_accuracy": "Share of edit prompts whose greedy continuation after the edit gives the new object.",
    "paraphrase_accuracy": "New-fact accuracy on held-out paraphrases the edit never trained on.",
    "paraphrase_accuracy_strict": "Held-out paraphrase accuracy counting any mention of the new object.",
    "paraphrase_accuracy_stated": "Held-out paraphrase accuracy, counting only paraphrases on which the "
                                  "unedited model stated the old object.",
    "train_paraphrase_accuracy": "New-fact accuracy on the paraphrases the edit trained on.",
    "question_accuracy": "New-fact accuracy when the fact is asked as a question through the chat "
                         "template (chat models only).",
    "forget_rate": "Share of the edit prompt and held-out paraphrases whose continuation after the edit "
                   "no longer gives the old object as the answer.",
    "forget_rate_strict": "Forget rate counting any mention of the old object, one inside a repetition "
                          "of the subject included.",
    "forget_rate_stated": "Forget rate, counting only prompts on which the unedited model stated the old object.",
    "old_fact_stated_before": "Share of those prompts on which the unedited model stated the old object; "
                              "where it is low, a high forget rate shows little.",
    "f_control": "Share of the unrelated control facts the unedited model stated that the edited model "
                 "still states.",
    "f_control_clear": "F_control over the control facts the unedited model stated by a clear "
                       "first-token margin.",
    "f_control_dataset": "F_control over the data set's own other facts (none about the edited "
                         "subject) that the unedited model stated.",
    "control_stated_before": "Number of control facts the unedited model stated.",
    "control_clear_before": "Number of control facts the unedited model stated by a clear margin.",
    "control_lost": "Number of stated control facts the edited model no longer states.",
    "neighbourhood_accuracy": "Share of the neighbouring facts (other subjects, same template or "
                              "relation) the unedited model stated that the edited model still states.",
    "neighbourhood_accuracy_clear": "Neighbourhood accuracy over the neighbours the unedited model "
                                    "stated by a clear first-token margin.",
    "neighbourhood_stated_before": "Number of neighbouring facts the unedited model stated.",
    "neighbourhood_clear_before": "Number of neighbouring facts the unedited model stated by a clear margin.",
    "neighbourhood_lost": "Number of stated neighbouring facts the edited model no longer states.",
    "efficacy": "Share of edit prompts on which the edited model gives the new object a higher "
                "probability than the old one.",
    "paraphrase_efficacy": "Efficacy on the held-out paraphrases.",
    "neighbourhood_specificity": "Share of neighbourhood prompts on which the true object stays more "
                                 "probable than the new one (CounterFact).",
    "mc_new_first": "Share of multiple-choice questions on which the edited model ranks the new object first.",
    "mc_old_gone": "Share of multiple-choice questions on which the old object is no longer ranked first.",
    "not_forgotten": "Share of audited edits after which the edit prompt still gives the old object.",
    "soft_forgetting": "Share of audited edits where the old object is gone from the edit prompt but a "
                       "probe or prompt still reaches it.",
    "hard_forgetting": "Share of audited edits where no probe, prompt or relearning attack reaches the old object.",
    "reach_logit_lens": "Share of audited edits where the logit lens ranks the old object in its top-k at some layer.",
    "reach_linear_probe": "Share of audited edits where a trusted linear probe still reads the old object.",
    "reach_indirect_prompts": "Share of audited edits where an indirect prompt still names the old object.",
    "reach_formats": "Share of audited edits where another prompt format still gives the old object.",
    "reach_relearning": "Share of audited edits where a few steps of fine-tuning on other facts bring the "
                        "old object back.",
    "generation_entropy": "N-gram entropy of free generations (lower means more repetitive text).",
    "perplexity": "Perplexity of the edited model on neutral text (the unedited model's is in the header).",
    "trainable_parameters": "Parameters the edit trained.",
    "steps": "Optimizer steps of the edit.",
    "seconds": "Wall-clock seconds per edit.",
    "audit_seconds": "Wall-clock seconds per audit.",
}

CSS = """
body{font:15px/1.45 system-ui,sans-serif;color:#1b1b1b;background:#fafafa;margin:0}
main{max-width:1100px;margin:0 auto;padding:1.5em}
h1{font-size:1.5em;margin:.2em 0 .6em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;background:#fff}
th,td{border:1px solid #d4d4d4;padding:.3em .55em;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.def,p.note{color:#555}.good{color:#176b2c}.bad{color:#a11d1d}.dim{color:#888}
.verdict{padding:.8em 1em;border-left:6px solid #888;background:#fff;margin:1em 0}
.verdict.hard{border-color:#176b2c}.verdict.soft{border-color:#c98a00}.verdict.not{border-color:#a11d1d}
img{max-width:100%;height:auto;border:1px solid #ddd;background:#fff}
code{background:#eee;padding:0 .25em}footer{color:#888;font-size:.85em;padding:1em 1.5em}
"""
# Blocks any script and any resource but inline styles and data: images: the page stays self-contained.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

EDIT_KINDS = ("edit", "train_paraphrase", "test_paraphrase", "question")
RETAINED_KINDS = ("control", "neighbourhood")


def page(title: str, body: str) -> str:
    from importlib.metadata import version

    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body><main>\n<h1>{escape(title)}</h1>\n{body}\n</main>"
            f"<footer>circuitedit {escape(version('circuitedit'))}</footer></body></html>\n")


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def cell(value, cls: str = "") -> str:
    """One <td>: numbers right-aligned, text escaped; `cls` adds a CSS class."""
    classes = " ".join(c for c in (cls, "num" if isinstance(value, (int, float)) else "") if c)
    text = fmt(value) if not isinstance(value, str) else value
    return f'<td class="{classes}">{escape(text)}</td>' if classes else f"<td>{escape(text)}</td>"


def table(head: list[str] | None, rows: list[list[str]]) -> str:
    """rows: lists of already rendered <td> cells (see `cell`); head None: no header row."""
    header = "" if head is None else "<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr></thead>"
    body = "\n".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    return f"<table>{header}<tbody>\n{body}\n</tbody></table>"


def para(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{escape(text)}</p>' if cls else f"<p>{escape(text)}</p>"


def png_img(data: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


# ---- edit -----------------------------------------------------------------------------------


def edit_html(edit: dict) -> str:
    req = edit["request"]
    title = f"Edit: {req['subject']}: {req['old_object']} → {req['new_object']}"
    parts = [_edit_header(edit), _rows_section(edit), _metrics_section(edit.get("metrics") or {}),
             _localization_section(edit), _stages_section(edit)]
    if isinstance(edit.get("audit"), dict) and "verdict" in edit["audit"]:
        parts.append("<h2>Audit</h2>" + verdict_block(edit["audit"]["verdict"]))
    return page(title, "\n".join(parts))


def _edit_header(edit: dict) -> str:
    req = edit["request"]
    facts = [("model", edit.get("model") or "–"), ("method", edit.get("method") or "–"),
             ("edit prompt", req["prompt"].replace("{}", req["subject"])),
             ("optimizer steps", fmt(edit.get("steps"))),
             ("total seconds", fmt((edit.get("timings") or {}).get("total_s")))]
    out = table(None, [[f"<th>{escape(k)}</th>", cell(v)] for k, v in facts])
    note = old_fact_note(edit) if edit.get("rows") else None
    return out + (para(f"Note: {note}.", "note") if note else "")


def _row_verdict(row: dict) -> tuple[str, str]:
    """(text, css class): edit rows want the new object and not the old; retained rows their answer."""
    if row["kind"] in RETAINED_KINDS:
        before, after = row.get("expected_before"), row.get("expected_after")
        if before == after:
            return ("kept", "good") if after else ("still wrong", "dim")
        return ("lost", "bad") if before else ("gained", "good")
    ok = row.get("expected_after") and not row.get("old_after")
    return ("new object, old gone", "good") if ok else ("not rewritten", "bad")


def _rows_section(edit: dict) -> str:
    rows = edit.get("rows") or []
    # As in the terminal: the edit's own rows, then only the stated facts the edit lost.
    shown = [r for r in rows if r["kind"] not in RETAINED_KINDS] + changed_fact_rows(rows)
    body = [[cell(r["kind"]), cell(r["prompt"]), cell(r.get("expected", "")), cell(r.get("before", "").strip()),
             cell(r.get("after", "").strip()), cell(*_row_verdict(r))] for r in shown]
    return ("<h2>Before / after (greedy continuations)</h2>"
            + table(["probe", "prompt", "expected", "before", "after", "verdict"], body)
            + "".join(para(line) for line in unchanged_summary(rows)))


def _metrics_section(metrics: dict) -> str:
    known = [k for k in METRIC_LABELS if metrics.get(k) is not None]
    body = [[cell(METRIC_LABELS[k]), cell(metrics[k]), cell(METRIC_DEFINITIONS.get(k, ""), "def")] for k in known]
    # Figures this page has no label for (newer metrics) still show, under their key.
    other = [k for k, v in metrics.items() if k not in METRIC_LABELS and isinstance(v, (int, float))]
    body += [[cell(k), cell(metrics[k]), cell(METRIC_DEFINITIONS.get(k, ""), "def")] for k in other]
    return '<h2>Metrics</h2><div id="metrics">' + table(["metric", "value", "definition"], body) + "</div>"


def _localization_section(edit: dict) -> str:
    loc = edit.get("localization")
    comps = edit.get("components") or []
    out = "<h2>Localization</h2>"
    if loc and loc.get("scores"):
        out += png_img(heatmap_png(loc, comps), f"{loc.get('method', '')} localization heatmap")
    else:
        out += para("No localization scores (the method trains without localizing).", "note")
    body = [[cell(i), cell(c["name"]), cell(c.get("score"))] for i, c in enumerate(comps, 1)]
    return out + (table(["rank", "trained component", "score"], body) if comps else "")


def heatmap_png(localization: dict, components: list[dict]) -> bytes:
    """plots.localization_heatmap of edit.json's localization, as PNG bytes."""
    from ..localize.base import ComponentScore, LocalizationResult
    from ..models.components import Component
    from .plots import localization_heatmap

    scores = [ComponentScore(Component(s["layer"], s["kind"], s["head"]), s["position"], s["score"])
              for s in localization["scores"]]
    result = LocalizationResult(localization.get("method", ""), scores)
    selected = [Component(c["layer"], c["kind"], c["head"]) for c in components]
    with tempfile.TemporaryDirectory() as tmp:
        path = localization_heatmap(result, Path(tmp) / "heatmap.png", selected=selected)
        return path.read_bytes()


def _stages_section(edit: dict) -> str:
    stages = edit.get("stages") or []
    if not stages:
        return ""
    body = [[cell(s.get("name", "")), cell(s.get("steps")), cell(s.get("seconds")),
             cell(s.get("trainable_parameters")), cell(s.get("final_loss"))] for s in stages]
    return "<h2>Training stages</h2>" + table(["stage", "steps", "seconds", "trainable parameters",
                                               "final loss"], body)


# ---- bench ----------------------------------------------------------------------------------


def bench_html(summary: dict, chart_png: bytes | None = None) -> str:
    """chart_png: summary.png's bytes when already drawn (else drawn here)."""
    parts = [_bench_header(summary), _bench_table(summary), _bench_audits(summary)]
    parts.append(png_img(chart_png or _bench_chart(summary), "mean of each metric per method"))
    return page(f"circuitedit bench: {summary.get('model', '')}", "\n".join(parts))


def _bench_header(summary: dict) -> str:
    sel = summary.get("selection") or {}
    lines = [f"Model {summary.get('model')}; data {summary.get('data')} ({summary.get('format')}).",
             f"Facts: {sel.get('kept_count')} kept of {sel.get('scanned')} scanned ({sel.get('criterion')}).",
             "Single-edit protocol: each fact edited on a fresh copy of the base model; mean "
             f"[95% bootstrap interval] over facts ({summary.get('bootstrap')} resamples)."]
    ppl = (summary.get("base") or {}).get("perplexity")
    if ppl is not None:
        lines.append(f"Unedited model: neutral-text perplexity {ppl:.1f}.")
    lines += [line.lstrip("- ") for line in summary.get("software") or []]
    return "".join(para(line) for line in lines)


def _bench_table(summary: dict) -> str:
    from .bench import SUMMARY_METRICS, cell_text

    methods = summary["methods"]
    labels = list(methods)
    rows = [[cell("facts (errors)")] + [cell(f"{methods[m]['n']} ({methods[m]['errors']})") for m in labels]
            + [cell("", "def")]]
    for name, title in SUMMARY_METRICS.items():
        if any(name in methods[m]["metrics"] for m in labels):
            rows.append([cell(title)] + [cell(cell_text(methods[m]["metrics"].get(name), name), "num") for m in labels]
                        + [cell(METRIC_DEFINITIONS.get(name, ""), "def")])
    names = {"mc_old_first": "multiple choice: old first", **SUMMARY_METRICS}
    before = [f"{names.get(k, k)} {v:.3f}" for k, v in (summary.get("before") or {}).items() if v is not None]
    note = para("Unedited model on the same facts: " + ", ".join(before) + ".", "note") if before else ""
    return '<h2>Metrics</h2><div id="metrics">' + table(["metric", *labels, "definition"], rows) + "</div>" + note


def _bench_audits(summary: dict) -> str:
    audits = summary.get("audits") or []
    if not audits:
        return ""
    labels = list(summary["methods"])
    rows = [[cell(a["fact"])] + [cell(a["verdicts"].get(m, "–")) for m in labels] for a in audits]
    return ("<h2>Audit verdict per fact</h2>"
            + para("hard / soft / not forgotten; for soft, what still reaches the old object.", "note")
            + table(["fact", *labels], rows))


def _bench_chart(summary: dict) -> bytes:
    from .bench import bar_chart

    with tempfile.TemporaryDirectory() as tmp:
        bar_chart(summary, Path(tmp) / "summary.png")
        return (Path(tmp) / "summary.png").read_bytes()


# ---- audit ----------------------------------------------------------------------------------

MODEL_LABELS = {"base": "before", "stage1": "after stage 1", "stage2": "after the edit"}


def verdict_block(verdict: dict) -> str:
    label = str(verdict.get("label", ""))
    cls = label.split()[0] if label else ""
    reaching = verdict.get("reaching") or {}
    out = f'<div class="verdict {escape(cls)}"><strong>Verdict: {escape(label)}.</strong> '
    out += f"{escape(str(verdict.get('sentence', '')))}</div>"
    if reaching:
        out += table(["still reaches the old object", "evidence"],
                     [[cell(k), cell(str(v))] for k, v in reaching.items()])
    return out


def _measured(part) -> dict | None:
    """The part when measured; None when missing or skipped."""
    return part if isinstance(part, dict) and part.get("status", "measured") != "skipped" else None


def _skipped(part) -> str:
    reason = part.get("reason") if isinstance(part, dict) else None
    return para(f"Skipped: {reason or 'not run'}.", "note")


def audit_html(audit: dict) -> str:
    req = audit["request"]
    title = f"Audit: {req['subject']}: {req['old_object']} → {req['new_object']}"
    head = ""
    if audit.get("model"):
        head = para(f"Model {audit['model']}. Edit prompt: {req['prompt'].replace('{}', req['subject'])!r}.")
    sections = [("Latent knowledge", "latent", _latent_table), ("Conditional access", "access", _access_table),
                ("Relearning attack", "relearn", _relearn_table), ("Format robustness", "formats", _formats_table)]
    parts = [head, verdict_block(audit["verdict"])]
    for heading, key, render in sections:
        part = _measured(audit.get(key))
        parts.append(f"<h2>{escape(heading)}</h2>" + (render(part) if part else _skipped(audit.get(key))))
    parts.append(_timings(audit.get("timings") or {}))
    return page(title, "\n".join(parts))


def _models(part: dict) -> list[str]:
    return [m for m in MODEL_LABELS if m in (part.get("models") or {})]


def _latent_table(latent: dict) -> str:
    rows = []
    for m in _models(latent):
        entry = latent["models"][m]
        ranks = ((entry.get("final") or {}).get("lens_old_rank") or [])[1:]  # layer 0: the embeddings
        best = min(ranks) if ranks else None
        rows.append([cell(MODEL_LABELS[m]), cell(entry.get("next_token_old_rank")),
                     cell(entry.get("next_token_new_rank")), cell(best),
                     cell(ranks.index(best) + 1 if ranks else None)])
    return table(["model", "next-token rank of old", "rank of new", "best logit-lens rank of old", "at layer"],
                 rows)


def _access_table(access: dict) -> str:
    rows = [[cell(MODEL_LABELS[m]), cell(access["models"][m].get("old_share")),
             cell(access["models"][m].get("old_share_of_reachable"))] for m in _models(access)]
    return (para("Share of indirect prompts (questions, few-shot, cues, ...) whose answer names the old object.")
            + table(["model", "share naming the old object", "of those reachable before"], rows))


def _relearn_table(relearn: dict) -> str:
    def figures(label: str, m: dict) -> list[str]:
        return [cell(label), cell(m.get("forget_rate")), cell(m.get("old_logprob")), cell(m.get("new_accuracy"))]

    rows = [figures(label, relearn[key]) for key, label in (("base", "unedited"), ("before", "edited"))
            if isinstance(relearn.get(key), dict)]
    for name, attack in (relearn.get("attacks") or {}).items():
        label = f"+ relearn {name.replace('_', ' ')}"
        if _measured(attack) and isinstance(attack.get("after"), dict):
            rows.append(figures(label, attack["after"]))
        else:
            reason = attack.get("reason") if isinstance(attack, dict) else None
            rows.append([cell(label), cell(f"skipped: {reason or 'not run'}"), cell(""), cell("")])
    return (para(f"{relearn.get('steps')} fine-tuning steps of the edited model on text without the edited fact.")
            + table(["model", "forget rate", "log P(old)", "new-fact accuracy"], rows))


def _formats_table(formats: dict) -> str:
    models = _models(formats)
    names = list(formats["models"].get("stage2") or {})
    rows = []
    for name in names:
        values = [formats["models"][m].get(name) for m in models]
        rows.append([cell(name)] + [cell(f"{v['new_accuracy']:.2f} / {v['forget_rate']:.2f}")
                                    if isinstance(v, dict) and "forget_rate" in v else cell("–") for v in values])
    return (para("New-object accuracy / forget rate per prompt format.")
            + table(["format", *(MODEL_LABELS[m] for m in models)], rows))


def _timings(timings: dict) -> str:
    rows = [[cell(k.removesuffix("_s")), cell(v)] for k, v in timings.items() if isinstance(v, (int, float))]
    return ("<h2>Audit cost (seconds)</h2>" + table(["part", "seconds"], rows)) if rows else ""
