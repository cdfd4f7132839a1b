"""Where circuitedit keeps its caches (`$CIRCUITEDIT_CACHE`)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CIRCUITEDIT_CACHE"


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "circuitedit"
