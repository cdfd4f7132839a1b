"""`dtype="auto"`: bf16 only where the hardware makes it the faster dtype."""

from __future__ import annotations

import pytest
import torch

from circuitedit.models import loading
from circuitedit.models.loading import ModelLoadError, resolve_dtype


@pytest.mark.parametrize(("amx", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cpu_picks_bf16_only_with_amx(monkeypatch, amx, expected):
    # AVX512-BF16 alone measured slower than fp32 (README): it must not decide.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert resolve_dtype("auto", "cpu") is expected
    assert resolve_dtype(None, "cpu") is expected
    assert loading.cpu_has_fast_bf16() is amx


def test_explicit_dtypes_win_and_unknown_ones_fail():
    assert resolve_dtype("fp32", "cpu") is torch.float32
    assert resolve_dtype("bf16", "cpu") is torch.bfloat16
    assert resolve_dtype(torch.float16, "cpu") is torch.float16
    with pytest.raises(ModelLoadError, match="unknown dtype 'int3'"):
        resolve_dtype("int3", "cpu")
