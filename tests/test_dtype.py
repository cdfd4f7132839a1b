"""`dtype="auto"`: bf16 only where the hardware makes it the faster dtype."""

from __future__ import annotations

import pytest
import torch

from circuitedit.models import loading
from circuitedit.models.loading import ModelLoadError, resolve_dtype


@pytest.mark.parametrize(("amx", "avx512_bf16", "speedup", "expected"), [
    (True, True, None, torch.bfloat16),      # AMX: bf16 without measuring
    (False, False, None, torch.float32),     # bf16 emulated: fp32 without measuring
    (False, True, 0.65, torch.float32),      # the Xeon measured in the README
    (False, True, 4.8, torch.bfloat16),      # the AMD EPYC measured in the README
])
def test_auto_on_cpu_picks_bf16_only_where_it_is_faster(monkeypatch, amx, avx512_bf16, speedup, expected):
    def measured():
        assert speedup is not None, "measured although the CPU flags already decide"
        return speedup

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(loading, "bf16_matmul_speedup", measured)
    assert resolve_dtype("auto", "cpu") is expected
    assert resolve_dtype(None, "cpu") is expected
    assert loading.cpu_has_fast_bf16() is (expected is torch.bfloat16)


def test_bf16_speedup_is_fp32_best_time_over_bf16_best_time(monkeypatch):
    """Guards what the speedup is: the best of `repeats` timed fp32 matmuls over the best bf16 one,
    the untimed warm-up call left out (the clock and the matmul are fakes with known durations)."""
    from types import SimpleNamespace

    clock = [0.0]
    # per dtype: the warm-up call, then the timed repeats
    durations = {torch.float32: iter([100.0, 5.0, 3.0, 4.0]), torch.bfloat16: iter([100.0, 2.0, 0.5, 1.5])}
    seen = []

    def fake_linear(x, weight):
        assert x.dtype == weight.dtype and x.shape == (8, 16) and weight.shape == (32, 16)
        seen.append(x.dtype)
        clock[0] += next(durations[x.dtype])

    monkeypatch.setattr(loading, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(torch.nn.functional, "linear", fake_linear)
    ratio = loading.bf16_matmul_speedup(rows=8, width=16, out=32, repeats=3)
    assert ratio == 3.0 / 0.5
    assert seen == [torch.float32] * 4 + [torch.bfloat16] * 4


def test_bf16_speedup_runs_real_matmuls():
    """Guards that the real measurement runs on this machine and gives a finite positive ratio."""
    ratio = loading.bf16_matmul_speedup(rows=8, width=16, out=32, repeats=2)
    assert 0 < ratio < float("inf")


def test_explicit_dtypes_win_and_unknown_ones_fail():
    assert resolve_dtype("fp32", "cpu") is torch.float32
    assert resolve_dtype("bf16", "cpu") is torch.bfloat16
    assert resolve_dtype(torch.float16, "cpu") is torch.float16
    with pytest.raises(ModelLoadError, match="unknown dtype 'int3'"):
        resolve_dtype("int3", "cpu")
