"""Which code produced a result: package versions and, from a git checkout, the commit.

A long benchmark is resumed across sittings; each record carries this so that results of
different code are never mixed unnoticed."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("circuitedit", "torch", "transformers", "peft")


def git_commit(path: Path | None = None) -> str | None:
    """Short commit of the checkout holding this package ("+dirty" with uncommitted changes), or None."""
    where = path or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def software() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    out["git"] = git_commit()
    return out


def describe(entry: dict) -> str:
    parts = [f"{name} {entry[name]}" for name in PACKAGES if entry.get(name)]
    return ", ".join(parts) + (f" (git {entry['git']})" if entry.get("git") else "")


def software_lines(records: Sequence[dict]) -> list[str]:
    """One line per distinct software of the records, with how many records it produced."""
    counts = Counter(describe(r["software"]) if r.get("software") else "not recorded" for r in records)
    if len(counts) <= 1:
        return [f"- software: {next(iter(counts))}"] if counts else []
    return ["- software (results from more than one version):"] + [
        f"  - {text}: {count} records" for text, count in counts.most_common()]
