"""The `circuitedit` command line: edit, demo, ask (and more subcommands as they land)."""

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
    import warnings

    warnings.filterwarnings("ignore")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="HF id, local path, or alias (default: embedded gemma3-270m; also smollm2)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 where the hardware is fast at it), fp32, bf16")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")


def add_edit_args(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    parser.add_argument("--top-k", type=int, default=None, help="number of components to edit")
    parser.add_argument("--kinds", choices=["both", "heads", "mlps"], default=None)
    parser.add_argument("--localizer", default=None, help="localization method (default: attribution)")
    parser.add_argument("--method", default=None, help="editor (default: unlearn-then-learn)")
    parser.add_argument("--config", type=Path, default=None, help="a saved EditConfig (JSON or YAML)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep-adapter", action="store_true", help="keep the stage-2 adapter unmerged")
    parser.add_argument("--out", type=Path, default=None, help="write edit.json, adapters (and --save-model) here")
    parser.add_argument("--save-model", action="store_true", help="also write the edited model under OUT/model")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def build_config(args):
    from .pipeline import EditConfig

    config = EditConfig()
    if args.config:
        text = args.config.read_text(encoding="utf-8")
        if args.config.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        config = EditConfig.from_dict(data)
    if args.top_k is not None:
        config.localize.top_k = args.top_k
    if args.kinds:
        config.localize.kinds = args.kinds
    if args.localizer:
        config.localize.method = args.localizer
    if args.method:
        config.method = args.method
    if args.seed is not None:
        config.localize.seed = config.editor.seed = args.seed
    if args.keep_adapter:
        config.editor.merge_learned = False
    return config


def requests_from_args(args):
    from .evaluate.datasets import load_requests
    from .requests import EditRequest

    if args.requests:
        return load_requests(args.requests, "jsonl")
    missing = [flag for flag, value in (("--subject", args.subject), ("--prompt", args.prompt),
                                         ("--old", args.old), ("--new", args.new)) if not value]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or give --requests FILE)")
    return [EditRequest(subject=args.subject, prompt=args.prompt, old_object=args.old, new_object=args.new,
                        paraphrases=args.paraphrase or [], test_paraphrases=args.test_paraphrase or [])]


def run_edits(args, requests, console: Console) -> int:
    from .models import load_model
    from .pipeline import edit
    from .report import print_edit, write_edit_outputs

    config = build_config(args)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    outputs = []
    for index, request in enumerate(requests):
        result = edit(loaded.model, loaded.tokenizer, request, config)
        data = result.to_dict()
        data["model"] = loaded.name
        if args.out:
            target = args.out if len(requests) == 1 else args.out / f"edit-{index:03d}"
            write_edit_outputs(result, target, loaded.tokenizer, args.save_model)
            data["out"] = str(target)
        outputs.append(data)
        if not args.json:
            console.rule(f"{request.subject}: {request.old_object} -> {request.new_object}")
            print_edit(data, console)
    if args.json:
        summary = outputs[0] if len(outputs) == 1 else {"edits": outputs}
        print(json.dumps(summary, default=str))
    return 0


def cmd_edit(args, console: Console) -> int:
    return run_edits(args, requests_from_args(args), console)


def cmd_demo(args, console: Console) -> int:
    from .evaluate.facts import demo_requests

    requests = demo_requests()[: 1 if not args.all else None]
    if not args.json:
        console.print("[bold]circuitedit demo[/]: rewrite a fact in the embedded Gemma-3-270M and prove it.")
    return run_edits(args, requests, console)


def cmd_ask(args, console: Console) -> int:
    from .evaluate.scoring import CHAT, greedy_continuations, render_prompt, uses_chat_template
    from .models import load_model

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    form = CHAT if (args.chat and uses_chat_template(loaded.tokenizer)) else "cloze"
    prompts = [render_prompt(loaded.tokenizer, p, form) for p in args.prompt]
    for prompt, text in zip(args.prompt, greedy_continuations(loaded.model, loaded.tokenizer, prompts, args.max_new_tokens), strict=True):
        if args.json:
            print(json.dumps({"prompt": prompt, "continuation": text}))
        else:
            console.print(f"[bold]{prompt}[/]{text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="circuitedit", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("edit", help="localize, unlearn and rewrite one fact (or a file of them)")
    p.add_argument("--subject")
    p.add_argument("--prompt", help="cloze prompt with {} / {subject} or the subject verbatim")
    p.add_argument("--old", help="the object the model gives now")
    p.add_argument("--new", help="the object it should give")
    p.add_argument("--paraphrase", action="append", help="a phrasing used in training (repeatable)")
    p.add_argument("--test-paraphrase", action="append", help="a held-out phrasing, only measured (repeatable)")
    p.add_argument("--requests", type=Path, help="JSON/JSONL file of edit requests")
    add_edit_args(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("demo", help="rewrite a built-in fact in the default model and show the proof")
    p.add_argument("--all", action="store_true", help="run every built-in demo edit")
    add_edit_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ask", help="greedy answers from a model (an edited one included)")
    p.add_argument("prompt", nargs="+")
    p.add_argument("--chat", action="store_true", help="through the chat template (chat models)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--json", action="store_true")
    add_model_args(p)
    p.set_defaults(func=cmd_ask)
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
