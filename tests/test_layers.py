"""The rooms of src/circuitedit import downward only (the contract in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_no_room_imports_a_higher_one():
    if shutil.which("lint-imports") is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    run = subprocess.run(["lint-imports", "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:]


def test_the_public_api_is_importable_from_the_top():
    from circuitedit import EditConfig, EditRequest, edit, load_model

    assert callable(edit) and callable(load_model)
    assert EditConfig().method == "unlearn-then-learn" and EditRequest.__name__ == "EditRequest"
