"""Shared test setup: offline, headless, no writes outside tmp folders."""

import os

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _single_thread_torch():
    """Tiny models run ~20x faster single-threaded on a shared 2-core machine."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own brainalign cache and data home."""
    root = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("BRAINALIGN_CACHE", str(root / "cache"))
    monkeypatch.setenv("BRAINALIGN_DATA", str(root / "data"))


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def tok():
    """A tiny word-level tokenizer built here (no download)."""
    from brainalign.features.testing import tiny_tokenizer

    return tiny_tokenizer()
