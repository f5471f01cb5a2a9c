"""Sweeps at scale (issue 19): hub revisions streamed under a weight budget, and the
features stage run as tasks of its own on a Dask cluster."""

import logging
import os
from pathlib import Path

import pytest
import xarray as xr

from brainalign import ValidationError
from brainalign.features.testing import tiny_hub_cache
from brainalign.features.weights import revision_bytes
from brainalign.sweep import Sweep, make_plan, run

REPO = "tiny-org/sweep-neox"
REVS = [f"step{100 * (i + 1)}" for i in range(12)]
PROVENANCE_VARS = ["task_seconds", "task_peak_rss_mb"]


def _config(tmp_path: Path, store: str, revisions, model=REPO, **over) -> dict:
    cfg = {
        "dataset": {"name": "simulated", "options": {"space": 200, "stories": 3, "features": "random:8", "n_subjects": 1,
                                                     "snr": 2.0}},
        "model": {"name": str(model), "revisions": list(revisions)} if revisions else {"name": str(model)},
        "layers": [1, 2],
        "features": {"context_tokens": 16, "batch_size": 8},
        "encoding": {"alphas": {"logspace": [0, 4, 3]}, "n_folds": 2},
        "stats": {"test": "none"},
        "output": {"store": str(tmp_path / store)},
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


def _values(path) -> xr.Dataset:
    return Sweep(path).results.drop_vars(PROVENANCE_VARS).drop_attrs()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A hub cache folder holding the revisions (torch runs single-threaded: conftest)."""
    root = tmp_path_factory.mktemp("mirror") / "hub"
    tiny_hub_cache(root, REPO, REVS, arch="gpt_neox", n_layers=2, hidden=16)
    return root


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty working Hugging Face cache, offline."""
    import huggingface_hub.constants as c

    work = tmp_path / "work-hub"
    work.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(work))
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(work))
    return work


def test_weights_stay_within_budget_and_results_equal_keeping_everything(tmp_path, mirror, hub_cache, monkeypatch,
                                                                          caplog):
    import huggingface_hub.constants as c

    size = revision_bytes(mirror, REPO, REVS[0])
    budget = 2 * size + size // 4
    held = []  # the working cache's weights at each task: sampled from inside the sweep
    import importlib

    run_mod = importlib.import_module("brainalign.sweep.run")

    real = run_mod.run_checkpoint

    def spy(plan, i, progress=False, before_load=None):
        repo = hub_cache / ("models--" + REPO.replace("/", "--"))

        def fetch_then_measure():
            before_load()
            held.append(sum(revision_bytes(hub_cache, REPO, r) or 0 for r in REVS if (repo / "refs" / r).is_file()))

        return real(plan, i, progress, before_load=fetch_then_measure)

    monkeypatch.setattr(run_mod, "run_checkpoint", spy)
    first = REVS[:6]
    with caplog.at_level(logging.INFO, logger="brainalign.features.weights"):
        run(_config(tmp_path, "streamed.zarr", first, weights={"mirror": str(mirror), "disk_budget": budget}),
            progress=False)
        fetched_first = [r.message for r in caplog.records if "fetched" in r.message]
        caplog.clear()
        # the sweep extended to all 12: only the 6 new revisions are fetched
        streamed = run(_config(tmp_path, "streamed.zarr", REVS, weights={"mirror": str(mirror), "disk_budget": budget}),
                       progress=False)
        fetched_more = [r.message for r in caplog.records if "fetched" in r.message]
        caplog.clear()
        # another sweep of the same features (other alphas): everything is cached, nothing is fetched
        run(_config(tmp_path, "other.zarr", REVS, weights={"mirror": str(mirror), "disk_budget": budget},
                    encoding={"alphas": {"logspace": [0, 3, 2]}}), progress=False)
        fetched_again = [r.message for r in caplog.records if "fetched" in r.message]
    assert len(fetched_first) == 6 and len(fetched_more) == 6 and fetched_again == []
    assert all(f"@{r} " in m for r, m in zip(REVS[6:], fetched_more))
    assert max(held) <= budget and max(held) > 0
    assert revision_bytes(hub_cache, REPO, REVS[-1]) is None  # every fetched revision freed
    # keeping everything (the mirror itself as the cache, nothing fetched or freed)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(mirror))
    monkeypatch.setenv("HF_HUB_CACHE", str(mirror))
    kept = run(_config(tmp_path, "kept.zarr", REVS, weights={"keep": True}), progress=False)
    xr.testing.assert_identical(_values(streamed.path), _values(kept.path))
    assert revision_bytes(mirror, REPO, REVS[0]) == size  # the user's cache untouched


def test_separate_feature_tasks_on_dask_equal_in_process(tmp_path):
    pytest.importorskip("distributed")
    from brainalign.datasets import _corpus
    from brainalign.training import train_tiny

    model = train_tiny(_corpus.stories_dir(), tmp_path / "model", n_layers=2, hidden=16, heads=2, seq_len=32, steps=8,
                       batch_size=4, checkpoints=3, seed=0).out_dir
    local = run(_config(tmp_path, "local.zarr", None, model=model, layers="all"), progress=False)
    split = run(_config(tmp_path, "split.zarr", None, model=model, layers="all", executor={"stages": "separate"}),
                executor="dask", workers=2, progress=False)
    xr.testing.assert_identical(_values(local.path), _values(split.path))
    assert os.getpid() not in {v["pid"] for v in split.results.attrs["tasks"].values()}
    with pytest.raises(ValidationError, match="features.cache is false"):
        make_plan(_config(tmp_path, "x.zarr", None, model=model, executor={"stages": "separate"},
                          features={"cache": False}))


def test_internal_states_fetch_the_weights_their_features_did_not_need(tmp_path, mirror, hub_cache, caplog):
    """A sweep whose features are all cached still fetches each revision for a state that
    reads the weights (weight_norm), within the budget, and frees it after."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    revs = REVS[:3]
    size = revision_bytes(mirror, REPO, revs[0])
    weights = {"mirror": str(mirror), "disk_budget": 2 * size}
    run(_config(tmp_path, "plain.zarr", revs, weights=weights), progress=False)  # features cached, weights freed
    with caplog.at_level(logging.INFO, logger="brainalign.features.weights"):
        res = run(_config(tmp_path, "states.zarr", revs, weights=weights, internal_states=["weight_norm"]),
                  progress=False).results
    assert len([r for r in caplog.records if "fetched" in r.message]) == 3
    assert all(revision_bytes(hub_cache, REPO, r) is None for r in revs)  # freed again
    want = []
    for r in revs:
        m = AutoModelForCausalLM.from_pretrained(REPO, revision=r, cache_dir=str(mirror))  # the LM head too
        want.append(float(torch.sqrt(sum((p.detach().double() ** 2).sum() for p in m.parameters()))))
    np.testing.assert_allclose(res["weight_norm"].values, want, rtol=1e-5)
    assert len(set(np.round(want, 4))) == 3  # different initialisations
