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
def key_second_moment(model: nn.Module, tokenizer, layer: int, texts: list[str], batch: int = 16) -> tuple[torch.Tensor, int]:
    """(C, n): the uncentred second moment E[k kᵀ] (d_k, d_k), fp64, of the down projection's
    input at `layer` over every non-padding token of `texts`, and the number of keys n."""
    adapter = get_adapter(model)
    device = input_device(model)
    total: torch.Tensor | None = None
    count = 0
    for start in range(0, len(texts), batch):
        rows = [encode_text(tokenizer, t) for t in texts[start:start + batch]]
        ids, mask = pad_rows(rows, padding_id(tokenizer), "right", device)
        with mlp_key_hook(model, adapter, layer) as keys:
            hidden_states(model, ids, mask)
        k = keys[0][mask.bool()].double()  # (n, d_k)
        total = k.T @ k if total is None else total + k.T @ k
        count += k.shape[0]
    return total / max(count, 1), count


def covariance_path(model: nn.Module, layer: int, spec: CorpusSpec, root: Path | None = None) -> Path:
    fingerprint = model_fingerprint(model)
    digest = hashlib.sha256(f"{fingerprint}:{layer}:{spec.key()}".encode()).hexdigest()[:24]
    return (root or cache_root()) / "covariance" / f"{digest}.safetensors"


def layer_covariance(model: nn.Module, tokenizer, layer: int, spec: CorpusSpec | None = None,
                     cache: bool = True, root: Path | None = None, progress=None) -> torch.Tensor:
    """C (d_k, d_k) fp32 of `layer`, read from the cache when this model's is there, else computed
    from the corpus (sampled text + the shipped retain prompts) and, with `cache`, written."""
    spec = spec or CorpusSpec()
    path = covariance_path(model, layer, spec, root) if cache else None
    if path is not None and path.exists():
        return load_file(str(path))["C"]
    if progress:
        progress(f"key statistics of layer {layer}: sampling ~{spec.tokens} tokens (once per model and layer)")
    texts = sampled_texts(model, tokenizer, spec) + retain_prompts()
    second, count = key_second_moment(model, tokenizer, layer, texts)
    c = second.float().contiguous()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        save_file({"C": c}, tmp, metadata={"keys": str(count), "layer": str(layer), "corpus": json.dumps(spec.key())})
        os.replace(tmp, path)
    return c
