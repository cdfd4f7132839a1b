"""Key statistics of an MLP: C = E[k kᵀ] over the input of its output (down) projection.

ROME's update is keyed through C⁻¹, so that keys the model sees on ordinary text move as little
as possible; AlphaEdit projects onto C's small-eigenvalue subspace. C is computed from text the
project can reach offline: text sampled from the model itself (seeded) and the package's neutral
text and retain prompts; it is cached per model fingerprint, layer and corpus, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.forward import hidden_states, input_device
from ..core.paths import cache_root
from ..core.reference_cache import model_fingerprint
from ..core.tokens import encode_text, pad_rows, padding_id
from ..data.facts import retain_prompts
from ..models.arch import get_adapter
from ..models.hooks import mlp_key_hook

SAMPLE_SEEDS = ("The", "In", "It", "A", "When", "This", "He", "She", "They", "We", "I", "There", "After", "On")


@dataclass(frozen=True)
class CorpusSpec:
    """Which text C is computed from: `tokens` sampled tokens (seeded) plus the shipped texts."""

    tokens: int = 20_000
    length: int = 128  # tokens per sampled text
    seed: int = 0

    def key(self) -> str:
        return f"sampled{self.tokens}-len{self.length}-seed{self.seed}"


def sampled_texts(model: nn.Module, tokenizer, spec: CorpusSpec, batch: int = 32) -> list[str]:
    """About `spec.tokens` tokens of text sampled from the model (top-k 40), seeded without
    touching the global RNG; they cover what the model itself finds ordinary."""
    count = max(1, -(-spec.tokens // spec.length))
    device = input_device(model)
    texts: list[str] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(spec.seed)
        for start in range(0, count, batch):
            seeds = [SAMPLE_SEEDS[i % len(SAMPLE_SEEDS)] for i in range(start, min(count, start + batch))]
            ids, mask = pad_rows([encode_text(tokenizer, s) for s in seeds], padding_id(tokenizer), "left", device)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=spec.length, do_sample=True,
                                 top_k=40, pad_token_id=padding_id(tokenizer))
            texts += tokenizer.batch_decode(out, skip_special_tokens=True)
    return texts


@torch.no_grad()
def key_second_moments(model: nn.Module, tokenizer, layers: list[int], texts: list[str],
                       batch: int = 16) -> tuple[dict[int, torch.Tensor], int]:
    """({layer: C}, n): the uncentred second moment E[k kᵀ] (d_k, d_k), fp64, of the down
    projection's input at each of `layers` over every non-padding token of `texts` (one pass for
    all layers), and the number of keys n."""
    adapter = get_adapter(model)
    device = input_device(model)
    totals: dict[int, torch.Tensor] = {}
    count = 0
    for start in range(0, len(texts), batch):
        rows = [encode_text(tokenizer, t) for t in texts[start:start + batch]]
        ids, mask = pad_rows(rows, padding_id(tokenizer), "right", device)
        with ExitStack() as stack:
            captured = {layer: stack.enter_context(mlp_key_hook(model, adapter, layer)) for layer in layers}
            hidden_states(model, ids, mask)
        for layer, keys in captured.items():
            k = keys[0][mask.bool()].double()  # (n, d_k)
            totals[layer] = k.T @ k + totals.get(layer, 0)
        count += int(mask.sum())
    return {layer: total / max(count, 1) for layer, total in totals.items()}, count


def _digest(fingerprint: str, *parts) -> str:
    return hashlib.sha256(":".join([fingerprint, *map(str, parts)]).encode()).hexdigest()[:24]


def corpus_texts(model: nn.Module, tokenizer, spec: CorpusSpec, fingerprint: str, root: Path | None) -> list[str]:
    """The sampled corpus plus the shipped retain prompts, kept beside the covariances (sampling
    is most of the one-time cost; every layer's C reads the same texts)."""
    path = None if root is None else root / f"corpus-{_digest(fingerprint, spec.key())}.json"
    if path is not None and path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    texts = sampled_texts(model, tokenizer, spec) + retain_prompts()
    if path is not None:
        _write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(texts), encoding="utf-8"))
    return texts


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def layer_covariances(model: nn.Module, tokenizer, layers: list[int], spec: CorpusSpec | None = None,
                      cache: bool = True, root: Path | None = None, progress=None) -> dict[int, torch.Tensor]:
    """{layer: C (d_k, d_k) fp32}: read from the cache where this model's is there, the others
    computed in one pass over the corpus and, with `cache`, written (atomically)."""
    spec = spec or CorpusSpec()
    fingerprint = model_fingerprint(model)
    folder = (root or cache_root()) / "covariance" if cache else None
    paths = {layer: None if folder is None else folder / f"C-{_digest(fingerprint, layer, spec.key())}.safetensors"
             for layer in layers}
    found = {layer: load_file(str(path))["C"] for layer, path in paths.items() if path is not None and path.exists()}
    missing = [layer for layer in layers if layer not in found]
    if not missing:
        return found
    if progress:
        progress(f"key statistics of layers {missing}: ~{spec.tokens} sampled tokens (once per model)")
    texts = corpus_texts(model, tokenizer, spec, fingerprint, folder)
    moments, count = key_second_moments(model, tokenizer, missing, texts)
    for layer, moment in moments.items():
        found[layer] = moment.float().contiguous()
        if paths[layer] is not None:
            meta = {"keys": str(count), "layer": str(layer), "corpus": spec.key()}
            _write_atomic(paths[layer], lambda tmp, c=found[layer], m=meta: save_file({"C": c}, tmp, metadata=m))
    return found


def layer_covariance(model: nn.Module, tokenizer, layer: int, spec: CorpusSpec | None = None,
                     cache: bool = True, root: Path | None = None, progress=None) -> torch.Tensor:
    """C (d_k, d_k) fp32 of one layer (`layer_covariances`)."""
    return layer_covariances(model, tokenizer, [layer], spec, cache, root, progress)[layer]
