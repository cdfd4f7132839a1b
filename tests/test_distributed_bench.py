"""`bench --workers N` on a local Ray instance: the same records as the serial path, and a worker
killed mid-run costs nothing (its fact reruns on a new worker, no record is lost or doubled)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from circuitedit.cli import main
from circuitedit.data.facts import control_facts
from circuitedit.workflows.bench import BenchConfig, Workers, distributed, read_results, run_bench
from circuitedit.workflows.pipeline import EditConfig
from tiny import tiny_model

FIXTURE = Path(__file__).parent / "fixtures" / "bench_facts.jsonl"
FOURTH = {"subject": "Qux Foo", "prompt": "Qux Foo is located in the city of", "old_object": "Berlin",
          "new_object": "London", "test_paraphrases": ["Qux Foo can be found in the city of"],
          "relation": "located_in", "case_id": "invented-4"}
# Fields that time the run or name the checkout (which moves while other work commits); everything else must match the serial run's.
TIMING = ("timings", "seconds", "audit_seconds", "software")


@pytest.fixture(scope="module")
def ray():
    """A local Ray instance of two CPUs for the module's runs (they join it, and leave it up)."""
    ray = pytest.importorskip("ray", reason='bench --workers needs Ray: pip install -e ".[distributed]"')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved tiny Gemma-3 model, four invented facts, and the config of short edits."""
    from circuitedit.core.generate import greedy_continuations

    root = tmp_path_factory.mktemp("distributed")
    model, tokenizer = tiny_model("gemma3_text")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "facts.jsonl").write_text(FIXTURE.read_text() + json.dumps(FOURTH) + "\n")
    prompts = [f.prompt for f in control_facts()[:4]]
    answers = [text.split()[0] for text in greedy_continuations(model, tokenizer, prompts, 10)]
    (root / "controls.jsonl").write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n"
                                                 for p, a in zip(prompts, answers, strict=True)))
    edit = {"editor": {"learn": {"max_steps": 4}, "n_prefixes": 1, "n_template_neighbours": 2},
            "localize": {"kinds": "both", "positions": "all", "top_k": 3}, "evaluate": {"known_margin": 0.0}}
    return root, edit


def _config(setup, out: Path) -> BenchConfig:
    root, edit = setup
    return BenchConfig(data=str(root / "facts.jsonl"), fmt="jsonl", out=str(out), n=4, methods=["none", "learn-only"],
                       model=str(root / "model"), dtype="fp32", device="cpu", keep_unknown=True,
                       controls=str(root / "controls.jsonl"), generation_tokens=6, bootstrap=50,
                       edit=EditConfig.from_dict(edit))


def _comparable(record: dict) -> dict:
    record = {k: v for k, v in record.items() if k not in TIMING}
    record["metrics"] = {k: v for k, v in record.get("metrics", {}).items() if k not in TIMING}
    record["stages"] = [{k: v for k, v in s.items() if not k.endswith("_s") and k not in TIMING}
                        for s in record.get("stages", [])]
    return record


def _by_edit(records: list[dict]) -> dict:
    keyed = {(r["key"], r["method"], r["localizer"]): _comparable(r) for r in records}
    assert len(keyed) == len(records), "an edit was recorded twice"
    return keyed


@pytest.fixture(scope="module")
def serial_out(setup, tmp_path_factory):
    """The in-process run, on one thread as each worker of the two on two CPUs runs (another
    thread count sums in another order: the last digits of a loss would differ)."""
    out = tmp_path_factory.mktemp("serial") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_bench(_config(setup, out))
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def serial(serial_out):
    return _by_edit(read_results(serial_out / "results.jsonl"))


def test_two_workers_give_the_serial_records(ray, setup, serial, tmp_path):
    out = tmp_path / "workers"
    summary = run_bench(_config(setup, out), workers=Workers(count=2))
    records = read_results(out / "results.jsonl")
    assert len(records) == 8 and not any(r.get("error") for r in records)
    assert _by_edit(records) == serial
    assert summary["methods"]["learn-only"]["n"] == 4
    assert not ray.util.list_named_actors(), "the workers outlive the run"


def test_a_killed_worker_loses_nothing(ray, setup, serial, tmp_path):
    out = tmp_path / "killed"
    killed = []

    def kill_a_worker(record):  # after the first finished edit, while the other worker is mid-fact
        if not killed:
            name = sorted(ray.util.list_named_actors())[-1]
            ray.kill(ray.get_actor(name), no_restart=True)
            killed.append(name)

    run_bench(_config(setup, out), on_record=kill_a_worker, workers=Workers(count=2))
    records = read_results(out / "results.jsonl")
    assert killed and len(records) == 8 and not any(r.get("error") for r in records)
    assert _by_edit(records) == serial  # every edit once, as the serial run made it


def test_resume_with_workers_finishes_a_run_whose_driver_was_killed(ray, setup, serial_out, serial, tmp_path):
    """Three edits written, the fourth cut mid-line: --resume on two workers redoes only the rest."""
    out = tmp_path / "resumed"
    out.mkdir()
    (out / "bench.json").write_text((serial_out / "bench.json").read_text())
    lines = (serial_out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    seen = []
    run_bench(_config(setup, out), resume=True, on_record=seen.append, workers=Workers(count=2))
    assert len(seen) == 5
    assert _by_edit(read_results(out / "results.jsonl")) == serial


class RaisingWorker(distributed.BenchWorker):
    """A worker whose edits of fact 1 raise (a bad generation length), as a bug would."""

    def edit(self, index, method, loc):
        self.run.config.generation_tokens = "many" if index == 1 else 6
        return super().edit(index, method, loc)


class DyingWorker(distributed.BenchWorker):
    """A worker whose process exits on fact 1, as one killed by the kernel's OOM killer would."""

    def edit(self, index, method, loc):
        if index == 1:
            os._exit(1)
        return super().edit(index, method, loc)


def test_a_worker_that_keeps_dying_gives_error_rows(ray, setup, tmp_path, monkeypatch):
    """Past `max_retries` deaths a fact's unfinished edits are error rows; the others finish."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    monkeypatch.setattr(distributed, "BenchWorker", DyingWorker)
    out = tmp_path / "dying"
    config = _config(setup, out)
    config.n, config.methods = 3, ["none"]
    run_bench(config, workers=Workers(count=2, max_retries=1))
    records = {r["key"]: r for r in read_results(out / "results.jsonl")}
    assert set(records) == {"0", "1", "2"} and not records["0"].get("error") and not records["2"].get("error")
    assert records["1"]["error"].startswith("worker died 2 times running this fact")


def test_an_edit_that_raises_is_an_error_row_with_its_message(ray, setup, tmp_path, monkeypatch):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(distributed, "BenchWorker", RaisingWorker)
    out = tmp_path / "raising"
    config = _config(setup, out)
    config.n, config.methods = 2, ["none"]
    run_bench(config, workers=Workers(count=2))
    records = {r["key"]: r for r in read_results(out / "results.jsonl")}
    assert set(records) == {"0", "1"} and not records["0"].get("error") and "metrics" in records["0"]
    assert records["1"]["error"].startswith(("TypeError: ", "ValueError: ")) and "metrics" not in records["1"]
    assert records["1"]["subject"] == "Baz Qux" and records["1"]["method"] == "none"


def test_without_ray_workers_fail_in_one_line(monkeypatch, tmp_path, capsys):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    out = tmp_path / "o"
    assert main(["bench", "--data", str(FIXTURE), "--format", "jsonl", "--out", str(out), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[distributed]"' in err
    assert not out.exists()  # nothing loaded, nothing written


def test_address_without_workers_is_a_user_error():
    with pytest.raises(ValueError, match="--workers N"):
        Workers(address="auto")


def test_placement_one_worker_per_gpu_and_a_share_of_the_cpus():
    gpu = distributed.placement({"CPU": 16.0, "GPU": 2.0}, 4, None)
    assert (gpu.count, gpu.options["num_gpus"], gpu.threads) == (2, 1, 8)
    cpu = distributed.placement({"CPU": 16.0, "GPU": 2.0}, 4, "cpu")  # pinned to the CPU: no GPUs
    assert (cpu.count, cpu.options, cpu.threads) == (4, {"num_cpus": 4, "num_gpus": 0}, 4)
    crowded = distributed.placement({"CPU": 2.0}, 3, None)  # more workers than cores: a thread each
    assert crowded.count == 3 and crowded.threads == 1 and 0 < crowded.options["num_cpus"] < 1
