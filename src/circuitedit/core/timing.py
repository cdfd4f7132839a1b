"""Seconds per named phase of a piece of work."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timings(dict):
    """{"<phase>_s": seconds}: `with timings.phase("localize"): ...` adds the block's wall time."""

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            key = f"{name}_s"
            self[key] = self.get(key, 0.0) + time.perf_counter() - start
