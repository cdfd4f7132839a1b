"""circuitedit: rewrite or remove one fact inside a causal language model, and measure what the
edit did. `demo` edits a built-in fact of the embedded Gemma-3-270M; `edit` any fact (or a file
of them); `localize` ranks the components that carry it; `ask` queries a model, an edited one
included; `audit` checks whether an old fact is gone or only hidden; `bench` compares methods."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from rich.console import Console

# Errors a user can cause; they print one line and exit 2, never a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RuntimeError, KeyError)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import huggingface_hub

    # Its retries log each failed request: without a network an error would be many lines.
    huggingface_hub.utils.logging.set_verbosity_error()
    import warnings

    warnings.filterwarnings("ignore")


def config_help(config_class: type, name: str, extra: str = "", *, with_default: bool = False) -> str:
    """A flag's help: the one line of help of the config field it sets (`field_help`), then
    `extra`; escaped for argparse."""
    from .core.config import field_help

    return (field_help(config_class, name, with_default=with_default) + extra).replace("%", "%%")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    from .workflows.bench.config import BenchConfig

    parser.add_argument("--model", default=None, help=config_help(BenchConfig, "model"))
    parser.add_argument("--dtype", default="auto", help=config_help(BenchConfig, "dtype"))
    parser.add_argument("--device", default=None, help=config_help(BenchConfig, "device"))


def add_selection_args(parser: argparse.ArgumentParser) -> None:
    from .localize import LocalizeConfig

    parser.add_argument("--kinds", choices=["both", "heads", "mlps"], default=None,
                        help=config_help(LocalizeConfig, "kinds", with_default=True))
    parser.add_argument("--positions", choices=["subject", "last", "all"], default=None,
                        help=config_help(LocalizeConfig, "positions", with_default=True))


LOCALIZER_NAMES = ": attribution (default), activation, causal-tracing, fact-lookup, gradient, random, all-layers"


def add_edit_args(parser: argparse.ArgumentParser) -> None:
    from .edit import EditorConfig
    from .localize import LocalizeConfig
    from .workflows.pipeline import EditConfig

    add_model_args(parser)
    parser.add_argument("--top-k", type=int, default=None, help=config_help(LocalizeConfig, "top_k", with_default=True))
    add_selection_args(parser)
    parser.add_argument("--localizer", default=None, help=config_help(LocalizeConfig, "method", LOCALIZER_NAMES))
    parser.add_argument("--method", default=None,
                        help=config_help(EditConfig, "method", ": unlearn-then-learn (default), learn-only, "
                                         "ia3-all-layers, rome, memit, alphaedit, rome-unlearn-then-learn, "
                                         "lora-localized, ft-localized, ft-full, none"))
    parser.add_argument("--config", type=Path, default=None, help="a saved EditConfig (JSON or YAML)")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"{config_help(LocalizeConfig, 'seed')}; {config_help(EditorConfig, 'seed')}")
    parser.add_argument("--keep-adapter", action="store_true", help="keep the stage-2 adapter unmerged")
    parser.add_argument("--out", type=Path, default=None, help="write edit.json, adapters (and --save-model) here")
    parser.add_argument("--save-model", action="store_true", help="also write the edited model under OUT/model")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--no-reference-cache", action="store_true",
                        help="recompute the unedited model's control answers and sampled prefixes instead of "
                             "reading them from $CIRCUITEDIT_CACHE/references")


def read_config_file(path: Path) -> dict:
    """The mapping saved in a JSON or YAML (.yaml/.yml) config file; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--config {path}: cannot read it ({exc})") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"--config {path}: invalid YAML ({' '.join(str(exc).split())})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config {path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None


def config_with_selection_flags(args):
    """A saved EditConfig (`--config`) or the defaults, with the localization flags on top."""
    from .workflows.pipeline import EditConfig

    config = EditConfig.from_dict(read_config_file(args.config)) if args.config else EditConfig()
    overrides = {"method": args.localizer, "top_k": args.top_k, "kinds": args.kinds, "positions": args.positions,
                 "fraction": vars(args).get("fraction"), "seed": args.seed}  # only `localize` has --fraction
    for name, value in overrides.items():
        if value is not None:
            setattr(config.localize, name, value)
    return config


def build_config(args):
    config = config_with_selection_flags(args)
    if args.method:
        config.method = args.method
    if args.seed is not None:
        config.editor.seed = args.seed
    if args.keep_adapter:
        config.editor.merge_learned = False
    config.validate()  # a bad value fails here, before the model loads
    return config


def requests_from_args(args):
    from .data.datasets import load_requests
    from .data.requests import EditRequest

    if args.requests:
        requests = load_requests(args.requests, args.format)
        return requests if args.n is None else requests[: args.n]
    if args.n is not None:
        raise ValueError("--n selects among the records of --requests FILE; give --requests")
    missing = [flag for flag, value in (("--subject", args.subject), ("--prompt", args.prompt),
                                         ("--old", args.old), ("--new", args.new)) if not value]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or give --requests FILE)")
    return [EditRequest(subject=args.subject, prompt=args.prompt, old_object=args.old, new_object=args.new,
                        paraphrases=args.paraphrase or [], test_paraphrases=args.test_paraphrase or [])]


def run_edits(args, requests, console: Console) -> int:
    from .core.files import check_output_target
    from .core.reference_cache import ReferenceCache
    from .data.facts import control_facts
    from .evaluate.snapshots import control_snapshot
    from .models import load_model
    from .render.tables import old_fact_note, print_edit
    from .workflows.outputs import EDIT_FILE, write_edit_outputs
    from .workflows.pipeline import edit

    config = build_config(args)
    targets = [None] * len(requests)
    if args.out:
        targets = [args.out] if len(requests) == 1 else [args.out / f"edit-{i:03d}" for i in range(len(requests))]
        for target in targets:  # before the model loads, not after the first edits
            check_output_target(target, EDIT_FILE)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    references = None if args.no_reference_cache else ReferenceCache.default()
    # Every edit starts from the same unedited model: its control answers are taken once (with a
    # reference cache, `edit` reads them from it, from memory after the first edit).
    baseline = None
    if len(requests) > 1 and references is None:
        baseline = control_snapshot(loaded.model, loaded.tokenizer, requests[0], control_facts(), config.evaluate)
    outputs = []
    for request, target in zip(requests, targets, strict=True):
        result = edit(loaded.model, loaded.tokenizer, request, config, control_baseline=baseline,
                      references=references)
        data = result.to_dict()
        data["model"] = loaded.name
        if target is not None:
            write_edit_outputs(result, target, loaded.tokenizer, args.save_model,
                               extra=lambda tmp: _add_model_name(tmp / EDIT_FILE, loaded.name))
            data["out"] = str(target)
        outputs.append(data)
        if not args.json:
            console.rule(f"{request.subject}: {request.old_object} -> {request.new_object}")
            print_edit(data, console)
        elif note := old_fact_note(data):  # stdout stays one JSON object
            print(f"note ({request.subject}): {note}", file=sys.stderr)
    if args.json:
        summary = outputs[0] if len(outputs) == 1 else {"edits": outputs}
        print(json.dumps(summary, default=str))
    return 0


def _add_model_name(path: Path, name: str) -> None:
    """edit.json records the model it edited (`audit --edit` loads it)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({"model": name, **data}, indent=2, default=str) + "\n", encoding="utf-8")


def cmd_edit(args, console: Console) -> int:
    requests = requests_from_args(args)
    if args.sequential:
        return run_sequential(args, requests, console)
    if args.together:
        return run_together(args, requests, console)
    if args.batch is not None:
        raise ValueError("--batch needs --sequential (batches of edits applied one after another)")
    return run_edits(args, requests, console)


def run_together(args, requests, console: Console) -> int:
    """Every request in one update of one model (--together); --out holds it as a history of one edit."""
    return run_sequential(args, requests, console, batch=len(requests), together=True)


def run_sequential(args, requests, console: Console, batch: int | None = None, together: bool | None = None) -> int:
    from .models import load_model
    from .render.tables import checkpoint_table
    from .workflows.bench.provenance import software
    from .workflows.history import EditHistory
    from .workflows.sequence import run_sequence

    if args.out is None:
        raise ValueError("--sequential and --together need --out DIR (the edit history is written there)")
    if args.save_model:
        raise ValueError("--save-model is for single edits; a history's model is rebuilt from its files "
                         "(circuitedit ask --edit DIR)")
    config = build_config(args)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    history = EditHistory.start(args.out, loaded.name)
    report = (lambda m: None) if args.json else (lambda m: console.print(checkpoint_table(m)))
    run_sequence(loaded.model, loaded.tokenizer, requests, history, config, batch_size=batch or args.batch or 1,
                 together=args.together if together is None else together, software=software(),
                 on_batch=report)
    if args.json:
        print(json.dumps(EditHistory.open(args.out).checkpoints[-1:] or [{}], default=str))
    else:
        console.print(f"wrote {args.out} ({len(history.entries)} edits; circuitedit history {args.out})")
    return 0


def cmd_history(args, console: Console) -> int:
    from .render.tables import checkpoint_table, history_table
    from .workflows.history import EditHistory

    history = EditHistory.open(args.dir)
    data = {"model": history.model, "edits": [e.to_dict() for e in history.entries], "reverted": history.reverted,
            "checkpoints": history.checkpoints}
    if args.json:
        print(json.dumps(data, default=str))
        return 0
    console.print(history_table(data))
    if history.checkpoints:
        console.print(checkpoint_table(history.checkpoints[-1]))
    return 0


def cmd_revert(args, console: Console) -> int:
    from .models import load_model
    from .workflows.history import EditHistory
    from .workflows.sequence import revert

    history = EditHistory.open(args.dir)
    history.find(args.edit)  # before the model loads
    loaded = load_model(args.model or history.model, dtype=args.dtype, device=args.device)
    report = revert(history, loaded.model, loaded.tokenizer, args.edit)
    if args.json:
        print(json.dumps(report.to_dict(), default=str))
        return 0
    others = "no other edits" if report.others_still_stated is None else \
        f"{report.others_still_stated:.2f} of the other edits' new objects still stated"
    console.print(f"reverted edit {report.edit_id}: {report.how}; max |weight difference| from the model rebuilt "
                  f"without it {report.max_weight_difference:.2e}; its prompts answered as the unedited model "
                  f"answers them: {report.answered_as_unedited:.2f}; {others}")
    return 0


def cmd_demo(args, console: Console) -> int:
    from .data.facts import demo_requests

    requests = demo_requests()[: 1 if not args.all else None]
    if not args.json:
        console.print("[bold]circuitedit demo[/]: rewrite a fact in the embedded Gemma-3-270M and prove it.")
    return run_edits(args, requests, console)


def cmd_ask(args, console: Console) -> int:
    from .core.generate import greedy_continuations
    from .core.tokens import CHAT, render_prompt, uses_chat_template
    from .models import load_model
    from .workflows.outputs import load_edited

    if args.edit:
        model, tokenizer, _ = load_edited(args.edit, args.model, dtype=args.dtype, device=args.device)
    else:
        model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    form = CHAT if (args.chat and uses_chat_template(tokenizer)) else "cloze"
    prompts = [render_prompt(tokenizer, p, form) for p in args.prompt]
    answers = greedy_continuations(model, tokenizer, prompts, args.max_new_tokens)
    for prompt, text in zip(args.prompt, answers, strict=True):
        if args.json:
            print(json.dumps({"prompt": prompt, "continuation": text}))
        else:
            console.print(f"[bold]{prompt}[/]{text}")
    return 0


UNUSED_NEW_OBJECT = "(no new object: localization only)"


def cmd_localize(args, console: Console) -> int:
    from rich.table import Table

    from .core.files import check_output_target
    from .core.reference_cache import ReferenceCache
    from .data.requests import EditRequest
    from .models import load_model
    from .workflows.localization import localize_request, write_localization
    from .workflows.outputs import LOCALIZATION_FILE

    missing = [flag for flag, value in (("--subject", args.subject), ("--prompt", args.prompt),
                                         ("--old", args.old)) if not value]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    # The edit's config with the command's flags on top: `localize` selects what `edit` would train.
    edit_config = config_with_selection_flags(args)
    edit_config.validate()  # an unknown localizer or a bad value fails here, before the model loads
    request = EditRequest(subject=args.subject, prompt=args.prompt, old_object=args.old,
                          new_object=UNUSED_NEW_OBJECT, paraphrases=args.paraphrase or [])
    if args.out is not None:
        check_output_target(args.out, LOCALIZATION_FILE)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    references = None if args.no_reference_cache else ReferenceCache.default()
    localization = localize_request(loaded.model, loaded.tokenizer, request, edit_config, references, loaded.name)
    data, result = localization.data, localization.result
    if args.out is not None:
        write_localization(localization, args.out)
    if args.json:
        print(json.dumps(data, default=str))
        return 0
    rows, chosen = data["ranked"], set(data["selected"])
    table = Table(title=f"{data['localizer']} localization of {request.text!r} -> {request.old_object!r} "
                        f"({result.passes} passes, {result.seconds:.1f} s)")
    for col in ("rank", "component", "layer", "kind", "head", "position", "score", "selected"):
        table.add_column(col, justify="right" if col in ("rank", "layer", "head", "score") else "left")
    limit = max(args.rows, len(chosen))
    for row in rows[:limit]:
        table.add_row(str(row["rank"]), row["component"], str(row["layer"]), row["kind"],
                      "-" if row["head"] is None else str(row["head"]), row["position"], f"{row['score']:.4g}",
                      "*" if row["component"] in chosen else "")
    console.print(table)
    if len(rows) > limit:
        console.print(f"... {len(rows) - limit} more components (see localization.json / --json)")
    if result.corruption:
        console.print(f"corruption: {result.corruption}")
    if not data["old_object_given"]:
        console.print(f"[yellow]note:[/] the model continues {data['continuation'].strip()[:40]!r}, not "
                      f"{request.old_object!r}: these scores rank what moves a fact it does not state")
    if args.out is not None:
        console.print(f"wrote {args.out / 'localization.json'} and {args.out / 'heatmap.png'}")
    return 0


def cmd_bench(args, console: Console) -> int:
    from argparse import Namespace

    from .workflows.bench import BenchConfig, Workers, resummarize, run_bench

    if args.summarize:
        summary = resummarize(args.out)
        if args.json:
            print(json.dumps(summary, default=str))
        else:
            from rich.markdown import Markdown

            console.print(Markdown((Path(args.out) / "summary.md").read_text(encoding="utf-8")))
        return 0
    if args.data is None:
        raise ValueError("bench: --data is required (except with --summarize)")
    edit_args = Namespace(**{**vars(args), "localizer": None, "method": None, "keep_adapter": False})
    config = BenchConfig(
        data=str(args.data), fmt=args.format, out=str(args.out), n=args.n,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        localizers=[m.strip() for m in args.localizer.split(",") if m.strip()],
        model=args.model, dtype=args.dtype, device=args.device, seed=args.seed or 0,
        keep_unknown=args.keep_unknown, max_scan=args.max_scan,
        controls=str(args.controls) if args.controls else None, edit=build_config(edit_args),
        generation_tokens=args.generation_tokens, audit=args.audit,
    )
    workers = Workers(count=args.workers, address=args.address)
    summary = run_bench(config, resume=args.resume, console=console, workers=workers)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        from rich.markdown import Markdown

        console.print(Markdown((Path(args.out) / "summary.md").read_text(encoding="utf-8")))
    return 0


def cmd_audit(args, console: Console) -> int:
    import time

    from .audit.run import AuditConfig, audit_edit
    from .core.files import check_output_directory
    from .workflows.audit_files import load_edit, write_audit

    out = args.out or args.edit
    check_output_directory(out)  # before the models load and the audit runs
    start = time.perf_counter()
    base, tokenizer, request, stage1, stage2, meta = load_edit(args.edit, args.model, args.dtype, args.device,
                                                               args.history_edit)
    load_s = time.perf_counter() - start
    config = AuditConfig(relearn=not args.no_relearn)
    if args.relearn_steps is not None:
        config.relearn_steps = args.relearn_steps
    report = audit_edit(base, tokenizer, request, stage1, stage2, config, model_name=meta["model"])
    report.timings["load_s"] = round(load_s, 2)
    json_path, md_path = write_audit(report, out)
    if args.json:
        print(json.dumps(report.to_dict(), default=str))
        return 0
    console.print(md_path.read_text(encoding="utf-8"))
    console.print(f"wrote {json_path} and {md_path}")
    console.print(f"audit took {report.timings['total_s']:.1f} s (+ {load_s:.1f} s loading the models)")
    return 0


def positive_int(text: str) -> int:
    value = int(text)  # a ValueError is argparse's "invalid positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class OneLineErrorParser(argparse.ArgumentParser):
    """A bad flag is one line on stderr, like every other error (`-h` shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    from .audit.run import AuditConfig
    from .localize import LocalizeConfig
    from .workflows.bench.config import BenchConfig

    parser = OneLineErrorParser(prog="circuitedit", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("edit", help="localize, unlearn and rewrite one fact (or a file of them)")
    p.add_argument("--subject")
    p.add_argument("--prompt", help="cloze prompt with {} / {subject} or the subject verbatim")
    p.add_argument("--old", help="the object the model gives now")
    p.add_argument("--new", help="the object it should give")
    p.add_argument("--paraphrase", action="append", help="a phrasing used in training (repeatable)")
    p.add_argument("--test-paraphrase", action="append", help="a held-out phrasing, only measured (repeatable)")
    p.add_argument("--requests", type=Path, help="a file of edit requests: ours (JSON/JSONL), CounterFact, zsRE, "
                   "Sports Facts (CSV)")
    p.add_argument("--format", default="auto", choices=["auto", "jsonl", "counterfact", "counterfact-rome", "zsre",
                                                        "sports"],
                   help="the --requests file's schema (default: detected from its fields)")
    p.add_argument("--n", type=positive_int, default=None, help="edit only the file's first N requests")
    p.add_argument("--together", action="store_true",
                   help="write every request into one model in one update (memit, alphaedit, unlearn-then-learn, "
                        "learn-only); --out holds the edit history")
    p.add_argument("--sequential", action="store_true",
                   help="apply the requests one after another to one model, re-measuring every fact edited so "
                        "far after each batch; --out is the edit history (resumable: rerun to continue)")
    p.add_argument("--batch", type=positive_int, default=None,
                   help="with --sequential: measure after every B edits (with --together: B facts per update)")
    add_edit_args(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("history", help="list the edits an edit history holds and its last measurements")
    p.add_argument("dir", type=Path, help="an `edit --sequential` or `--together` output directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("revert", help="take one edit out of an edit history, measured")
    p.add_argument("dir", type=Path, help="an `edit --sequential` or `--together` output directory")
    p.add_argument("--edit", type=positive_int, required=True, help="the edit's number (circuitedit history DIR)")
    p.add_argument("--json", action="store_true")
    add_model_args(p)
    p.set_defaults(func=cmd_revert)

    p = sub.add_parser("demo", help="rewrite a built-in fact in the default model and show the proof")
    p.add_argument("--all", action="store_true", help="run every built-in demo edit")
    add_edit_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ask", help="greedy answers from a model (an edited one included)")
    p.add_argument("prompt", nargs="+")
    p.add_argument("--chat", action="store_true", help="through the chat template (chat models)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--edit", type=Path, default=None,
                   help="an `edit --out` directory: answer from its edited model (its model/, else the base "
                        "model with its adapters merged; --model overrides that base)")
    p.add_argument("--json", action="store_true")
    add_model_args(p)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("localize", help="rank the heads and MLPs that carry a fact; table, JSON and heatmap")
    p.add_argument("--subject")
    p.add_argument("--prompt", help="cloze prompt with {} / {subject} or the subject verbatim")
    p.add_argument("--old", help="the object the model gives now")
    p.add_argument("--paraphrase", action="append", help="another phrasing scored too (repeatable)")
    p.add_argument("--localizer", default=None, help=config_help(LocalizeConfig, "method", LOCALIZER_NAMES))
    p.add_argument("--config", type=Path, default=None,
                   help="a saved EditConfig (JSON or YAML): select by its localize section")
    p.add_argument("--top-k", type=int, default=None, help=config_help(LocalizeConfig, "top_k", with_default=True))
    p.add_argument("--fraction", type=float, default=None, help=config_help(LocalizeConfig, "fraction"))
    add_selection_args(p)
    p.add_argument("--seed", type=int, default=None, help=config_help(LocalizeConfig, "seed"))
    p.add_argument("--no-reference-cache", action="store_true",
                   help="rescan the template instead of reading the scan from $CIRCUITEDIT_CACHE/references")
    p.add_argument("--rows", type=int, default=20, help="table rows to print (default 20)")
    p.add_argument("--out", type=Path, default=None, help="write localization.json and heatmap.png here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_model_args(p)
    p.set_defaults(func=cmd_localize)

    p = sub.add_parser("bench", help="benchmark editing methods on many facts (single-edit protocol)")
    p.add_argument("--data", type=Path, default=None, help=config_help(BenchConfig, "data"))
    p.add_argument("--format", default="counterfact-rome",
                   choices=["counterfact", "counterfact-rome", "sports", "zsre", "jsonl"],
                   help=config_help(BenchConfig, "fmt", with_default=True))
    p.add_argument("--n", type=int, default=20, help=config_help(BenchConfig, "n", with_default=True))
    p.add_argument("--methods", default="none,unlearn-then-learn,learn-only,ia3-all-layers,ft-full,ft-localized,lora-localized",
                   help=config_help(BenchConfig, "methods", ", comma-separated"))
    p.add_argument("--localizer", default="attribution",
                   help=config_help(BenchConfig, "localizers", ", comma-separated"))
    p.add_argument("--out", type=Path, default=Path("bench"), help=config_help(BenchConfig, "out", with_default=True))
    p.add_argument("--resume", action="store_true", help="keep OUT/results.jsonl and skip finished edits")
    p.add_argument("--summarize", action="store_true",
                   help="only rewrite OUT/summary.* from OUT/results.jsonl (no model, no edits)")
    p.add_argument("--keep-unknown", action="store_true", help=config_help(BenchConfig, "keep_unknown"))
    p.add_argument("--max-scan", type=int, default=None, help=config_help(BenchConfig, "max_scan"))
    p.add_argument("--controls", type=Path, default=None, help=config_help(BenchConfig, "controls"))
    p.add_argument("--generation-tokens", type=int, default=40,
                   help=config_help(BenchConfig, "generation_tokens", with_default=True))
    p.add_argument("--audit", action="store_true",
                   help=config_help(BenchConfig, "audit", "; OUT/audits/*.json, ~50 s per edit"))
    p.add_argument("--top-k", type=int, default=None, help=config_help(LocalizeConfig, "top_k", with_default=True))
    add_selection_args(p)
    p.add_argument("--config", type=Path, default=None, help="a saved EditConfig (JSON or YAML)")
    p.add_argument("--seed", type=int, default=None, help=config_help(BenchConfig, "seed"))
    p.add_argument("--workers", type=positive_int, default=1,
                   help="run the edits on N Ray workers, a model each (one per GPU where there are GPUs); "
                        "1: in this process (default); needs pip install -e '.[distributed]'")
    p.add_argument("--address", default=None,
                   help="with --workers: the Ray cluster to run on (auto: the one `ray start --head` started; "
                        "default: a local Ray instance sized to this machine)")
    p.add_argument("--json", action="store_true", help="print summary.json on stdout")
    add_model_args(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("audit", help="is the old fact gone or hidden? latent probes, indirect prompts, relearning")
    p.add_argument("--edit", type=Path, required=True, help="an `edit --out` directory (edit.json + adapters)")
    p.add_argument("--out", type=Path, default=None, help="write audit.json and audit.md here (default: --edit)")
    p.add_argument("--relearn-steps", type=int, default=None,
                   help=config_help(AuditConfig, "relearn_steps", with_default=True))
    p.add_argument("--no-relearn", action="store_true", help="skip the relearning attacks (audit.relearn false)")
    p.add_argument("--history-edit", type=positive_int, default=None,
                   help="with an edit history as --edit: the edit to audit, on the model holding the edits "
                        "before it (default: the last)")
    p.add_argument("--json", action="store_true", help="print audit.json's content instead of audit.md")
    add_model_args(p)
    p.set_defaults(func=cmd_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    _quiet_libraries()
    console = Console(stderr=bool(getattr(args, "json", False)))
    try:
        return args.func(args, console)
    except USER_ERRORS as exc:
        if args.verbose:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"circuitedit: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("circuitedit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
