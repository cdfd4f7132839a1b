"""Atomic writing: a reader never sees half a file or half an output directory."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def check_output_directory(path: Path) -> None:
    """Refuse an output directory path that is an existing file (or lies under one)."""
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"output path {path}: {path.parent} is not a directory")
    if path.exists() and not path.is_dir():
        raise ValueError(f"output path {path} exists and is not a directory")


def check_output_target(target: Path, marker: str) -> None:
    """Refuse an output path that holds anything but an earlier output of this kind (a directory
    with `marker` in it) or nothing: the atomic swap replaces the whole directory."""
    target = Path(target)
    check_output_directory(target)
    if target.exists() and any(target.iterdir()) and not (target / marker).is_file():
        raise ValueError(f"output path {target} is a non-empty directory without {marker}, not an earlier "
                         "output; it would be replaced, so choose a new path")


@contextmanager
def atomic_directory(target: Path, marker: str | None = None):
    """Yield a temporary directory beside `target`; it replaces `target` only on success.

    marker: a file every output of this kind has; an existing `target` without it is refused
    (check_output_target), never replaced."""
    target = Path(target)
    if marker is not None:
        check_output_target(target, marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            backup = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, backup)
            os.replace(tmp, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and a rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
