"""The HTML reports (report.html, summary.html, audit.html): built from small dicts and from a
tiny real edit, escaped, self-contained, and loaded in headless Chromium where one is installed."""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from circuitedit import EditConfig, EditRequest, edit
from circuitedit.audit.run import AuditConfig, AuditReport
from circuitedit.render.html import (
    METRIC_DEFINITIONS,
    REPORT_FILE,
    audit_html,
    bench_html,
    edit_html,
)
from circuitedit.render.tables import METRIC_LABELS
from circuitedit.workflows.audit_files import write_audit
from circuitedit.workflows.bench import SUMMARY_METRICS, aggregate, write_summary
from circuitedit.workflows.outputs import EDIT_FILE, write_edit_outputs
from tiny import tiny_model

REQUEST = dict(subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of", old_object="Paris",
               new_object="Rome", paraphrases=["Tourists visit the Eiffel Tower in the city of"],
               test_paraphrases=["The Eiffel Tower can be found in"],
               neighbourhood=[{"prompt": "The Louvre is located in the city of", "answer": "Paris"}])
HOSTILE = '<script>alert("x")</script> & <b>'


def _row(kind: str, prompt: str, before: bool, after: bool, old_after: bool = False) -> dict:
    return {"kind": kind, "prompt": prompt, "expected": "Rome" if kind == "edit" else "x",
            "before": " Paris" if kind == "edit" else " a", "after": " Rome", "expected_before": before,
            "expected_after": after, "old_after": old_after}


def edit_dict() -> dict:
    return {
        "model": "tiny", "method": "unlearn-then-learn", "steps": 6, "timings": {"total_s": 1.5},
        "request": {**REQUEST, "prompt": HOSTILE + " {}"},
        "components": [{"name": "L1.MLP", "layer": 1, "kind": "mlp", "head": None, "score": 0.5}],
        "localization": {"method": "attribution", "scores": [
            {"layer": 0, "kind": "head", "head": 0, "position": "last", "score": 0.2},
            {"layer": 1, "kind": "mlp", "head": None, "position": "last", "score": 0.5}]},
        "metrics": {"new_fact_accuracy": 0.875, "f_control": 0.6667, "forget_rate": None, "some_new_count": 3},
        "stages": [{"name": "learn", "steps": 6, "seconds": 0.5, "trainable_parameters": 64, "final_loss": 0.1}],
        "rows": [_row("edit", HOSTILE, False, True), _row("control", "kept fact", True, True),
                 _row("control", "lost fact", True, False), _row("control", "unknown fact", False, False),
                 _row("neighbourhood", "gained fact", False, True)],
    }


def summary_dict() -> dict:
    records = [{"key": str(i), "label": label, "method": label, "metrics": {"new_fact_accuracy": value + i / 10,
                                                                          "f_control": 0.9, "seconds": 12.0}}
               for i in range(2) for label, value in (("unlearn-then-learn", 0.5), ("ft-full", 0.25))]
    return {"model": "tiny <model>", "data": "facts.jsonl", "format": "jsonl", "bootstrap": 100,
            "selection": {"kept_count": 2, "scanned": 3, "criterion": "known", "untokenizable": 0},
            "base": {"perplexity": 42.0}, "before": {"mc_old_first": 0.5}, "methods": aggregate(records, 100),
            "audits": [{"fact": "Eiffel Tower: Paris -> Rome", "verdicts": {"ft-full": "soft (lens)"}}],
            "software": ["- software: test"]}


def audit_dict() -> dict:
    formats = {m: {"cloze": {"new_accuracy": 1.0, "forget_rate": f}} for m, f in (("base", 0.0), ("stage2", 1.0))}
    return {
        "model": "tiny", "request": REQUEST,
        "verdict": {"label": "soft forgetting", "sentence": "Soft forgetting: still reachable <via> the lens.",
                    "reaching": {"logit lens": "old object in the top 10 at layer(s) 1"}},
        "latent": {"models": {m: {"next_token_old_rank": 3, "next_token_new_rank": 1,
                                  "final": {"lens_old_rank": [9, 4, 2]}} for m in ("base", "stage2")}},
        "access": {"models": {m: {"old_share": 0.25, "old_share_of_reachable": 0.5} for m in ("base", "stage2")}},
        "formats": {"models": formats},
        "relearn": {"status": "skipped", "reason": "disabled (--no-relearn)"},
        "timings": {"total_s": 2.5, "latent_s": 1.0},
    }


@pytest.fixture(scope="module")
def edit_out(tmp_path_factory):
    """An edit --out directory of a tiny random model (a few optimizer steps)."""
    import torch

    config = EditConfig()
    config.localize.top_k, config.localize.kinds, config.localize.positions = 3, "both", "all"
    config.editor.unlearn.max_steps = config.editor.learn.max_steps = 2
    config.editor.n_prefixes, config.editor.n_template_neighbours = 1, 2
    config.evaluate.max_new_tokens = 3
    threads = torch.get_num_threads()  # module scope runs before conftest's one-thread fixture
    torch.set_num_threads(1)
    try:
        model, tokenizer = tiny_model("gemma3_text")
        result = edit(model, tokenizer, EditRequest(**REQUEST), config)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path_factory.mktemp("edit") / "out"

    def add_model(tmp: Path) -> None:
        data = json.loads((tmp / EDIT_FILE).read_text())
        (tmp / EDIT_FILE).write_text(json.dumps({**data, "model": "tiny-gemma"}))

    write_edit_outputs(result, out, tokenizer, extra=add_model)
    return out


def _external_references(page: str) -> list[str]:
    """Every src/href that is not an inline data: URI."""
    return [url for url in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page) if not url.startswith("data:")]


def test_edit_report_is_written_beside_edit_json(edit_out):
    page = (edit_out / REPORT_FILE).read_text(encoding="utf-8")
    data = json.loads((edit_out / EDIT_FILE).read_text())
    assert "tiny-gemma" in page  # rendered after `extra` added the model's name
    value = data["metrics"]["new_fact_accuracy"]
    assert f"<td class=\"num\">{value:.3f}</td>" in page
    assert METRIC_LABELS["new_fact_accuracy"] in page and METRIC_DEFINITIONS["new_fact_accuracy"] in page
    assert page.count("data:image/png;base64,") == 1  # the localization heatmap
    stated = [r for r in data["rows"] if r["kind"] == "control" and r["expected_before"]]
    kept = sum(r["expected_after"] for r in stated)
    if stated:
        assert f"{kept} of {len(stated)} control facts the model stated still stated" in page
    assert not list(edit_out.parent.glob(".out.tmp-*"))


def test_edit_html_escapes_text_and_lists_only_the_stated_facts_the_edit_lost():
    page = edit_html(edit_dict())
    assert "<script" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;" in page
    assert "lost fact" in page
    assert "kept fact" not in page and "unknown fact" not in page and "gained fact" not in page
    assert "1 of 2 control facts the model stated still stated" in page
    assert "neighbourhood facts" not in page  # none stated before: nothing counted
    assert ">0.875<" in page and ">0.667<" in page and METRIC_DEFINITIONS["f_control"] in page
    assert ">some_new_count<" in page  # a metric without a label still shows, under its key
    assert METRIC_LABELS["forget_rate"] not in page  # None: not measured, not shown


@pytest.mark.parametrize("render", [lambda: edit_html(edit_dict()), lambda: bench_html(summary_dict()),
                                    lambda: audit_html(audit_dict())], ids=["edit", "bench", "audit"])
def test_pages_are_self_contained(render):
    page = render()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert _external_references(page) == [] and "<script" not in page and "url(" not in page
    assert "Content-Security-Policy" in page  # the browser itself refuses anything external


def test_every_labelled_metric_has_a_definition():
    assert set(METRIC_LABELS) - set(METRIC_DEFINITIONS) == set()
    assert set(SUMMARY_METRICS) - set(METRIC_DEFINITIONS) == set()


def test_bench_writes_summary_html(tmp_path):
    write_summary(tmp_path, summary_dict())
    page = (tmp_path / "summary.html").read_text(encoding="utf-8")
    assert "tiny &lt;model&gt;" in page and "unlearn-then-learn" in page and "ft-full" in page
    assert "0.550 [0.500, 0.600]" in page and METRIC_DEFINITIONS["f_control"] in page
    assert "soft (lens)" in page and page.count("data:image/png;base64,") == 1


def test_audit_writes_audit_html(tmp_path, monkeypatch):
    data = audit_dict()
    report = AuditReport(EditRequest(**REQUEST), data["latent"], data["access"], data["formats"], data["relearn"],
                         data["verdict"], data["timings"], AuditConfig(), model="tiny")
    monkeypatch.setattr(AuditReport, "to_markdown", lambda self: "# audit\n")  # audit.md is not tested here
    write_audit(report, tmp_path)
    page = (tmp_path / "audit.html").read_text(encoding="utf-8")
    assert "Verdict: soft forgetting." in page and "still reachable &lt;via&gt; the lens" in page
    assert "old object in the top 10 at layer(s) 1" in page
    assert "Skipped: disabled (--no-relearn)." in page
    assert "1.00 / 0.00" in page and "1.00 / 1.00" in page  # formats: before and after


# ---- headless Chromium ----------------------------------------------------------------------


@pytest.fixture
def chromium() -> str:
    """The browser binary; listed first, so a machine without one skips before the tiny edit."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.skip("no headless Chromium installed (apt-get install chromium)")


class DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe: JSON messages separated by NUL
    bytes, read by Chromium on fd 3 and written on fd 4."""

    def __init__(self, binary: str, profile: Path):
        # The shell moves our stdin/stdout pipes onto fds 3 and 4, where Chromium expects them.
        script = 'exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null'
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        self.proc = subprocess.Popen(["sh", "-c", script, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.inbox: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self.last_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := self.proc.stdout.read1(1 << 16):
            *messages, buffer = (buffer + chunk).split(b"\0")
            for message in messages:
                self.inbox.put(json.loads(message))
        self.inbox.put(None)

    def wait(self, predicate, timeout: float = 30.0) -> dict:
        for event in self.events:  # an event may have come in while waiting for a reply
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while True:
            message = self.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            if message is None:
                raise RuntimeError("Chromium exited")
            if "method" in message:
                self.events.append(message)
            if predicate(message):
                return message

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.proc.stdin.write(json.dumps(message).encode() + b"\0")
        self.proc.stdin.flush()
        reply = self.wait(lambda m, i=self.last_id: m.get("id") == i)
        assert "error" not in reply, reply
        return reply["result"]

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def console_errors(events: list[dict]) -> list[str]:
    """Uncaught exceptions, console.error/assert calls and browser log errors (failed or refused
    loads) of one page, as DevTools' console would show them."""
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append((details.get("exception") or {}).get("description") or details.get("text", ""))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(params["entry"].get("text", ""))
    return errors


def load_in_chromium(binary: str, page: Path, profile: Path) -> dict:
    """{"text": the rendered text, "images": [decoded?], "errors": console errors} of one page."""
    tools = DevTools(binary, profile)
    try:
        target = tools.send("Target.createTarget", url="about:blank")["targetId"]
        session = tools.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            tools.send(f"{domain}.enable", session)
        tools.send("Page.navigate", session, url=page.as_uri())
        tools.wait(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session)
        state = tools.send("Runtime.evaluate", session, returnByValue=True, expression=(
            "({text: document.body.innerText,"
            " images: Array.from(document.images, i => i.complete && i.naturalWidth > 0)})"))
        state = state["result"]["value"]
        return {**state, "errors": console_errors([e for e in tools.events if e.get("sessionId") == session])}
    finally:
        tools.close()


def test_reports_load_in_headless_chromium_without_console_errors(chromium, edit_out, tmp_path, monkeypatch):
    write_summary(tmp_path, summary_dict())
    data = audit_dict()
    report = AuditReport(EditRequest(**REQUEST), data["latent"], data["access"], data["formats"], data["relearn"],
                         data["verdict"], data["timings"], AuditConfig(), model="tiny")
    monkeypatch.setattr(AuditReport, "to_markdown", lambda self: "# audit\n")
    write_audit(report, tmp_path)
    edit_value = json.loads((edit_out / EDIT_FILE).read_text())["metrics"]["new_fact_accuracy"]
    expected = {edit_out / REPORT_FILE: [METRIC_LABELS["new_fact_accuracy"], f"{edit_value:.3f}"],
                tmp_path / "summary.html": ["F_control", "0.550 [0.500, 0.600]"],
                tmp_path / "audit.html": ["Verdict: soft forgetting.", "Skipped: disabled (--no-relearn)."]}
    for page, texts in expected.items():
        loaded = load_in_chromium(chromium, page, tmp_path / f"profile-{page.stem}")
        assert loaded["errors"] == [], page.name
        assert all(text in loaded["text"] for text in texts), (page.name, texts)
        assert all(loaded["images"]), f"{page.name}: an inline image did not decode"
