"""The unedited model's answers to the built-in texts, kept between edits and between runs.

Every edit of a model starts by asking it the same things: the control facts (the "before" of
F_control) and the short texts it samples as training-prompt prefixes. Both depend only on the
model's weights, the tokenizer, the texts and a few settings, so they are stored under a
fingerprint of all of those and read back by later edits of the same model, as ROME keeps its
layer statistics on disk: the first edit of a model pays for them, later ones skip that work
(evidence: docs/speed.md). A change of any weight, of the texts, of a setting or of the software
that computes them is a new key, never a stale answer.

`ReferenceCache(None)` keeps entries in memory only (many edits in one process); with a folder
they are also written there (JSON, atomically) and found again by later processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# Bump when what an entry holds, or how it is computed, changes meaning.
SCHEMA = "1"
_HASH_CHUNK = 1 << 24  # bytes: sha256 releases the GIL on large buffers, so chunks hash on 2 threads


def _chunks(model: nn.Module):
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        yield f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode()
        flat = tensor.detach().reshape(-1).view(torch.uint8)  # every dtype as its raw bytes
        for start in range(0, flat.numel(), _HASH_CHUNK):
            yield flat[start:start + _HASH_CHUNK].cpu().contiguous().numpy().data


def _sha256(chunk) -> bytes:
    return hashlib.sha256(chunk).digest()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's class, config and the bytes of every parameter and buffer, hashed
    in chunks on two threads so that it stays a small part of an edit (evidence: docs/speed.md)."""
    outer = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None:
        outer.update(config.to_json_string(use_diff=False).encode())
    with ThreadPoolExecutor(max_workers=2) as pool:
        for digest in pool.map(_sha256, _chunks(model)):
            outer.update(digest)
    return outer.hexdigest()


def environment(model: nn.Module) -> dict:
    """What besides the weights decides the unedited model's answers to the last bit: the
    kernels (software versions, CPU or GPU, threads) and the attention implementation."""
    device = next(model.parameters()).device
    versions = {name: _version(name) for name in ("torch", "transformers", "circuitedit")}
    return {
        "schema": SCHEMA,
        **versions,
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
        "threads": torch.get_num_threads(),
        "attention": getattr(getattr(model, "config", None), "_attn_implementation", None),
    }


def tokenizer_identity(tokenizer, texts: list[str]) -> dict:
    """The tokenizer as far as an entry depends on it: its kind and how it encodes `texts`."""
    ids = [tokenizer(t)["input_ids"] for t in texts]
    return {"class": type(tokenizer).__name__, "size": len(tokenizer),
            "ids": hashlib.sha256(json.dumps(ids).encode()).hexdigest()}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@dataclass
class ReferenceCache:
    """Entries keyed by (model fingerprint, environment, kind, key); `root` None: memory only."""

    root: Path | None = None
    _memory: dict[str, object] = field(default_factory=dict, repr=False)

    @classmethod
    def default(cls) -> ReferenceCache:
        """On disk beside the model cache: `$CIRCUITEDIT_CACHE/references`."""
        from .paths import cache_root

        return cls(cache_root() / "references")

    def for_model(self, model: nn.Module) -> ModelReferences:
        """This model's entries, its fingerprint taken now: bind again after changing a weight."""
        return ModelReferences(self, {"model": model_fingerprint(model), "environment": environment(model)})

    def get_or_compute(self, identity: dict, kind: str, key: dict, compute: Callable[[], object]) -> object:
        full_key = {**identity, "kind": kind, **key}
        digest = hashlib.sha256(json.dumps(full_key, sort_keys=True).encode()).hexdigest()
        if digest in self._memory:
            return self._memory[digest]
        path = None if self.root is None else self.root / f"{kind}-{digest[:32]}.json"
        value = self._read(path, full_key) if path is not None else None
        if value is None:
            value = compute()
            if path is not None:
                self._write(path, full_key, value)
        self._memory[digest] = value
        return value

    @staticmethod
    def _read(path: Path, key: dict) -> object | None:
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # a damaged entry is recomputed and replaced, never trusted
            log.warning("reference cache: ignoring unreadable %s (%s)", path, exc)
            return None
        if not isinstance(stored, dict) or stored.get("key") != key:
            return None
        return stored.get("value")

    @staticmethod
    def _write(path: Path, key: dict, value: object) -> None:
        """Written to a temporary file and renamed: a reader never sees half an entry. A cache
        that cannot be written (read-only home, full disk) costs speed, not the edit."""
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"key": key, "value": value}, handle)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("reference cache: could not write %s (%s)", path, exc)
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)


@dataclass
class ModelReferences:
    """A ReferenceCache bound to one model's fingerprint and environment."""

    cache: ReferenceCache
    identity: dict

    def get_or_compute(self, kind: str, key: dict, compute: Callable[[], object]) -> object:
        """The stored JSON value of `kind` under `key` for this model, else `compute()`'s, stored."""
        return self.cache.get_or_compute(self.identity, kind, key, compute)
