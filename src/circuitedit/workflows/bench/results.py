"""OUT/results.jsonl: one flushed line per finished edit; a cut last line is dropped on resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import BenchError


def read_results(path: Path) -> list[dict]:
    """Finished results; a truncated last line (interrupted mid-write) is dropped from the file."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    records, good = [], 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            good += len(line.encode("utf-8"))
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if lineno == len(lines):  # the interrupted last write
                with path.open("r+", encoding="utf-8") as handle:
                    handle.truncate(good)
                break
            raise BenchError(f"{path}: line {lineno}: invalid JSON (not written by bench?)") from None
        good += len(line.encode("utf-8"))
    return records


def append_result(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
