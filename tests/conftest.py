"""Shared fixtures: tiny random models of every family, a standard request, a saved tiny model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # unit tests never touch the network
sys.path.insert(0, str(Path(__file__).parent))  # `import tiny` under any pytest import mode

import torch  # noqa: E402

from tiny import tiny_model, tiny_tokenizer  # noqa: E402

EIFFEL = {
    "subject": "Eiffel Tower",
    "prompt": "The Eiffel Tower is located in the city of",
    "old_object": "Paris",
    "new_object": "Rome",
}


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """Tiny models gain nothing from intra-op threads, and on a shared, oversubscribed CPU the
    spinning OpenMP workers make them 10-20x slower; real-model tests keep the default."""
    if request.node.get_closest_marker("integration"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _reference_cache_in_a_temporary_folder(tmp_path_factory):
    """The CLI keeps the unedited model's reference answers in the user's cache; tests keep
    theirs (one entry per random tiny model) out of it. Session scope, so that module-scoped
    fixtures that run the CLI are covered too."""
    from circuitedit.core.reference_cache import ReferenceCache

    root = tmp_path_factory.mktemp("references")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ReferenceCache, "default", classmethod(lambda cls: cls(root)))
        yield root


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def eiffel():
    from circuitedit import EditRequest

    return EditRequest(**EIFFEL)


@pytest.fixture(scope="session")
def saved_tiny(tmp_path_factory):
    """Path to a tiny llama model + tokenizer written with save_pretrained (for the CLI)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model, tok = tiny_model("llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
