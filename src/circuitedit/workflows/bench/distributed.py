"""`bench --workers N`: the edits of a bench run on N Ray actors, locally or on a cluster.

Each worker is an actor that loads the model once and runs whole facts: every (method,
localizer) pair of a fact goes to the same actor, in plan order, so the fact's localization and
unedited measures are computed once, as in the serial path. The driver keeps the facts, the
baselines and results.jsonl: it alone appends, one line per finished edit, so `--resume` works as
it does in-process. A worker that dies mid-fact (killed, out of memory) is replaced and the fact's
unfinished edits rerun on the new one, at most `Workers.max_retries` times, then they are error
rows; an edit that raises is an error row with its message. Ray is the optional extra
`distributed` (`pip install -e ".[distributed]"`).
"""

from __future__ import annotations

import gc
import logging
import math
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from ...core.reference_cache import ReferenceCache
from .config import BenchError, Workers
from .plan import label_for, plan
from .results import append_result
from .run import BenchRun, FactWork, _edit_record, _fact_work, record_head
from .selection import Selection

INSTALL_HINT = 'pip install -e ".[distributed]"'
WORKER_NAME = "circuitedit-bench-worker"  # actor names: f"{WORKER_NAME}-{pid}-{n}"


def require_ray(count: int):
    """The `ray` module, or a one-line BenchError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise BenchError(f"bench --workers {count} runs on Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


class BenchWorker:
    """A Ray actor (`ray.remote(BenchWorker)`): the model, loaded once, and the fact in hand."""

    def __init__(self, shared: BenchRun, threads: int):
        import torch
        from rich.console import Console

        from ...models import load_model

        torch.set_num_threads(threads)
        config = shared.config
        loaded = load_model(config.model, dtype=config.dtype, device=_worker_device(config.device))
        self.run = replace(shared, model=loaded.model, tokenizer=loaded.tokenizer, references=ReferenceCache())
        self.console = Console(quiet=True)  # the driver prints each error row
        self.fact: FactWork | None = None

    def ready(self) -> bool:
        return True

    def edit(self, index: int, method: str, loc: str | None) -> dict:
        """One results.jsonl line, as the serial path writes it; an exception is an error row."""
        try:
            if self.fact is None or self.fact.index != index:
                self.fact = None
                self.fact = _fact_work(self.run, index)
            return _edit_record(self.run, self.fact, method, loc, self.console)
        except Exception as exc:  # noqa: BLE001 - one failed edit must not sink the run
            return {**record_head(self.run, index, method, loc), "error": f"{type(exc).__name__}: {exc}"}


def _worker_device(device: str | None) -> str | None:
    """A GPU worker sees only its own GPU (Ray sets CUDA_VISIBLE_DEVICES): `cuda:1` is its `cuda`."""
    return "cuda" if device and device.startswith("cuda") else device


@dataclass
class Placement:
    """How many actors start and what each asks Ray for: a GPU each where the cluster has GPUs
    (and the run is not pinned to the CPU), and an equal share of the CPUs whose size is also
    the worker's torch thread count, so that the workers do not oversubscribe the cores."""

    count: int
    options: dict
    threads: int


def placement(resources: dict, count: int, device: str | None) -> Placement:
    gpus = int(resources.get("GPU", 0))
    use_gpus = gpus > 0 and not (device or "").startswith("cpu")
    if use_gpus:
        count = min(count, gpus)
    share = resources.get("CPU", 1) / count
    num_cpus = int(share) if share >= 1 else math.floor(share * 10_000) / 10_000
    options = {"num_cpus": num_cpus, "num_gpus": 1 if use_gpus else 0}
    return Placement(count, options, max(1, int(share)))


@dataclass
class _Slot:
    """One worker and the edits of the fact it runs (ObjectRef -> (method, localizer), plan order)."""

    actor: object
    index: int | None = None
    pending: dict = field(default_factory=dict)


class _Scheduler:
    """Hands whole facts to the workers, collects each edit as it finishes, replaces dead workers."""

    def __init__(self, ray, todo: deque, spawn: Callable[[], object], sink: Callable[[dict], None],
                 run: BenchRun, workers: Workers, console):
        self.ray, self.todo, self.spawn, self.sink = ray, todo, spawn, sink
        self.run, self.workers, self.console = run, workers, console
        self.owner: dict = {}  # ObjectRef -> _Slot
        self.deaths: dict[int, int] = {}  # fact index -> workers lost while running it

    def drive(self, actors: list) -> None:
        slots = [_Slot(actor) for actor in actors]
        try:
            for slot in slots:
                self._assign(slot)
            while self.owner:
                [ref], _ = self.ray.wait(list(self.owner), num_returns=1)
                self._collect(ref)
        finally:  # on a cluster the actors outlive the driver's connection unless killed
            for slot in slots:
                _kill(self.ray, slot.actor)

    def _assign(self, slot: _Slot) -> None:
        slot.index = None
        if not self.todo:
            return
        slot.index, pairs = self.todo.popleft()
        for method, loc in pairs:
            ref = slot.actor.edit.remote(slot.index, method, loc)
            slot.pending[ref] = (method, loc)
            self.owner[ref] = slot

    def _collect(self, ref) -> None:
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

        slot = self.owner[ref]
        method, loc = slot.pending[ref]
        try:
            record = self.ray.get(ref)
        except (RayActorError, WorkerCrashedError) as exc:
            self._lost(slot, exc)
            return
        except RayTaskError as exc:  # the worker caught what it could; this is Ray's own failure
            record = {**record_head(self.run, slot.index, method, loc), "error": _cause(exc)}
        del self.owner[ref], slot.pending[ref]
        self.sink(record)
        if not slot.pending:
            self._assign(slot)

    def _lost(self, slot: _Slot, exc: Exception) -> None:
        """The slot's worker died: its unfinished edits rerun on a new worker, or are error rows."""
        index, pairs = slot.index, list(slot.pending.values())
        for ref in slot.pending:
            del self.owner[ref]
        slot.pending.clear()
        _kill(self.ray, slot.actor)  # so that nothing it may still do is recorded twice
        self.deaths[index] = self.deaths.get(index, 0) + 1
        if self.deaths[index] <= self.workers.max_retries:
            self.console.print(f"[yellow]fact {index}: its worker died ({_first_line(exc)}); "
                               f"rerunning {len(pairs)} edits on a new worker[/]")
            self.todo.appendleft((index, pairs))
        else:
            message = f"worker died {self.deaths[index]} times running this fact: {_first_line(exc)}"
            for method, loc in pairs:
                self.sink({**record_head(self.run, index, method, loc), "error": message})
        if self.todo:
            slot.actor = self.spawn()
            self._assign(slot)


def _kill(ray, actor) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def edit_distributed(run: BenchRun, selection: Selection, records: list[dict], console, on_record,
                     workers: Workers) -> None:
    """Every (fact, method, localizer) not yet in `records`, on Ray actors; each finished edit is
    appended to results.jsonl by this process at once, as `_edit_all` does."""
    ray = require_ray(workers.count)
    todo = _todo(run, selection, records)
    _release_model(run)
    if not todo:
        return
    with _ray_session(ray, workers.address), _Progress(console, todo) as progress:
        place = placement(ray.cluster_resources(), workers.count, run.config.device)
        if place.count < workers.count:
            console.print(f"bench: {place.count} workers, one per GPU ({workers.count} asked for)")
        spawn = _spawner(ray, run, place)
        sink = _sink(run, records, console, on_record, progress)
        _Scheduler(ray, todo, spawn, sink, run, workers, console).drive(_start(ray, spawn, place.count))


def _todo(run: BenchRun, selection: Selection, records: list[dict]) -> deque:
    """(fact index, [(method, localizer), ...]) of every fact with unfinished edits, in order."""
    pairs = plan(run.config.methods, run.config.localizers)
    done = {(r["key"], r["method"], r.get("localizer")) for r in records if not r.get("error")}
    todo = deque()
    for index in selection.kept:
        left = [(m, loc) for m, loc in pairs if (str(index), m, loc) not in done]
        if left:
            todo.append((index, left))
    return todo


def _release_model(run: BenchRun) -> None:
    """The driver's model is not needed once the baselines are taken: free its (GPU) memory."""
    import torch

    on_gpu = run.model is not None and next(run.model.parameters()).is_cuda
    run.model = None
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()


@contextmanager
def _ray_session(ray, address: str | None):
    """Ray as the caller left it: joined if already initialized (a test's, a notebook's), else
    started locally (address None, sized to the machine) or connected to `address`, and left after."""
    owned = not ray.is_initialized()
    if owned:
        local = {} if address else {"include_dashboard": False}
        # Workers' output stays in Ray's logs (/tmp/ray/session_latest/logs), off the progress bar.
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, **local)
    try:
        yield
    finally:
        if owned:
            ray.shutdown()


def _spawner(ray, run: BenchRun, place: Placement) -> Callable[[], object]:
    """A function that starts one more worker; the run's data goes to the object store once."""
    import os

    shared = ray.put(replace(run, model=None, tokenizer=None, references=None))
    actor_class = ray.remote(BenchWorker)
    counter = iter(range(1_000_000))

    def spawn():
        name = f"{WORKER_NAME}-{os.getpid()}-{next(counter)}"
        return actor_class.options(name=name, max_restarts=0, **place.options).remote(shared, place.threads)

    return spawn


def _start(ray, spawn: Callable[[], object], count: int) -> list:
    """`count` workers with their models loaded; one that cannot start stops the run in one line."""
    from ray.exceptions import RayError

    actors = [spawn() for _ in range(count)]
    try:
        ray.get([actor.ready.remote() for actor in actors])
    except RayError as exc:
        for actor in actors:
            _kill(ray, actor)
        raise BenchError(f"a bench worker could not start: {_cause(exc)}") from None
    return actors


def _cause(exc: BaseException) -> str:
    """The last line of a Ray error that names an exception (its cause), else its first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "Error:" in line or "Exception:" in line]
    return named[-1] if named else _first_line(exc)


def _sink(run: BenchRun, records: list[dict], console, on_record, progress: _Progress) -> Callable[[dict], None]:
    """Where each finished edit goes: appended to results.jsonl at once, then counted."""
    path = run.out / "results.jsonl"

    def sink(record: dict) -> None:
        append_result(path, record)
        records.append(record)
        if record.get("error"):
            console.print(f"[red]fact {record['index']} {record['method']}: {record['error']}[/]")
        if on_record:
            on_record(record)
        progress.advance(record)

    return sink


class _Progress:
    """The driver's bar: edits done of all, facts done, error rows, elapsed and remaining time."""

    def __init__(self, console, todo: deque):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.left = {index: len(pairs) for index, pairs in todo}
        self.facts = self.errors = 0
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("edits,"),
                   TextColumn(f"{{task.fields[facts]}}/{len(self.left)} facts, {{task.fields[errors]}} errors"),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        self.bar = Progress(*columns, console=console, transient=False)
        self.task = self.bar.add_task("workers", total=sum(self.left.values()), facts=0, errors=0)

    def __enter__(self) -> _Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def advance(self, record: dict) -> None:
        self.left[record["index"]] -= 1
        self.facts += self.left[record["index"]] == 0
        self.errors += bool(record.get("error"))
        self.bar.update(self.task, advance=1, facts=self.facts, errors=self.errors,
                        description=f"fact {record['index']} {label_for(record['method'], record['localizer'])}")
