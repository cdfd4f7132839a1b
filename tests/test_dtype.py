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


def test_bf16_speedup_is_a_measured_ratio():
    ratio = loading.bf16_matmul_speedup(rows=8, width=16, out=32, repeats=2)
    assert 0 < ratio < float("inf")


def test_explicit_dtypes_win_and_unknown_ones_fail():
    assert resolve_dtype("fp32", "cpu") is torch.float32
    assert resolve_dtype("bf16", "cpu") is torch.bfloat16
    assert resolve_dtype(torch.float16, "cpu") is torch.float16
    with pytest.raises(ModelLoadError, match="unknown dtype 'int3'"):
        resolve_dtype("int3", "cpu")
