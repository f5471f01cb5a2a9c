"""Issue 15: the store's regions are shaped from the variable registry, as they were by hand.

``sweep.run._region`` places every registry variable along ``target`` or ``roi`` by its
dims; ``_region_by_hand`` below is the code it replaced (the ROI variables filled one by
one). Each region a sweep writes is compared with it, so the store's values stay the same.
"""

import importlib

import numpy as np
import pytest
import xarray as xr

from brainalign.sweep import Sweep, make_plan, run

sweep_run = importlib.import_module("brainalign.sweep.run")  # the module (brainalign.sweep.run is also the function)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from brainalign.datasets import _corpus
    from brainalign.training import train_tiny

    out = tmp_path_factory.mktemp("tiny")
    return train_tiny(_corpus.stories_dir(), out / "model", n_layers=2, hidden=32, heads=2, seq_len=32,
                      steps=20, batch_size=4, checkpoints=2, seed=0)


def _roi_array_by_hand(plan, roi, extra=()):
    roi = roi.transpose("layer", "subject", "roi", *extra)
    out = np.full((len(plan.layers), len(plan.subjects), len(plan.rois), *(roi.sizes[d] for d in extra)), np.nan,
                  dtype="float32")
    li = [plan.layers.index(int(layer)) for layer in roi.layer.values]
    si = [plan.subjects.index(str(s)) for s in roi.subject.values]
    for j, name in enumerate(roi.roi.values.tolist()):
        if name in plan.rois:
            out[np.ix_(li, si, [plan.rois.index(name)])] = roi.values[:, :, j : j + 1]
    return out


def _region_by_hand(plan, res, roi, fs, roi_cv=None):
    """sweep.run._region before it read the ROI variables from the registry."""
    out = {}
    for name, (dims, dtype) in sweep_run._variables(plan).items():
        if dims[-1] != "target" or name not in res:
            continue
        da = res[name].transpose("layer", "subject", "target")
        arr = np.full((len(plan.layers), len(plan.subjects), plan.n_targets), False if dtype == "bool" else np.nan,
                      dtype=dtype)
        li = [plan.layers.index(int(layer)) for layer in da.layer.values]
        si = [plan.subjects.index(str(s)) for s in da.subject.values]
        arr[np.ix_(li, si, np.arange(da.sizes["target"]))] = da.values.astype(dtype)
        out[name] = (("layer", "subject", "target"), arr)
    out["roi_score"] = (("layer", "subject", "roi"), _roi_array_by_hand(plan, roi))
    if roi_cv is not None:
        out["roi_cv_score"] = (("layer", "subject", "roi"), _roi_array_by_hand(plan, roi_cv))
    if "roi_boot" in res:
        out["roi_boot"] = (("layer", "subject", "roi", "boot"), _roi_array_by_hand(plan, res["roi_boot"], ("boot",)))
    if "roi_null" in res:
        terms = _roi_array_by_hand(plan, res["roi_null"], ("term",))
        full = np.full((*terms.shape[:-1], sweep_run._n_terms(plan)), np.nan, dtype="float32")
        full[..., : terms.shape[-1]] = terms
        out["roi_null"] = (("layer", "subject", "roi", "term"), full)
    norms = fs.metrics.get("activation_norm") or {}
    out["feature_norm"] = (("layer",), np.array([norms.get(layer, np.nan) for layer in plan.layers], dtype="float32"))
    loss = fs.metrics.get("mean_loss")
    out["lm_loss"] = ((), np.float32(np.nan if loss is None else loss))
    return xr.Dataset(out)


CASES = {
    "sign": ({"space": 400}, {"test": "sign"}, {}),
    "none": ({"space": 400}, {"test": "none"}, {}),
    # an atlas (ROIs the plan leaves out are dropped), fraction_significant ROI scores, permutation p-values
    "block-fsaverage5": ({"space": "fsaverage5"}, {"test": "block", "block_size": 5, "permutations": 20},
                         {"how": "fraction_significant"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_regions_from_the_registry_equal_those_filled_by_hand(tmp_path, tiny_model, monkeypatch, case):
    options, stats, rois = CASES[case]
    cfg = {
        "dataset": {"name": "simulated", "options": {**options, "stories": 4, "features": "random:8", "n_subjects": 2,
                                                     "snr": 2.0}},
        "model": {"name": str(tiny_model.out_dir)},
        "layers": "all",
        "features": {"context_tokens": 32, "batch_size": 8},
        "encoding": {"alphas": {"logspace": [0, 4, 5]}, "n_folds": 3},
        "stats": stats,
        "rois": rois,
        "output": {"store": str(tmp_path / "results.zarr")},
    }
    new, compared = sweep_run._region, []

    def both(plan, res, roi, fs, roi_cv=None):
        got = new(plan, res, roi, fs, roi_cv=roi_cv)
        want = _region_by_hand(plan, res, roi, fs, roi_cv=roi_cv)
        xr.testing.assert_identical(got[sorted(want.data_vars)], want[sorted(want.data_vars)])
        assert sorted(got.data_vars) == sorted(want.data_vars)
        compared.append(plan.checkpoints[len(compared)].label)
        return got

    monkeypatch.setattr(sweep_run, "_region", both)
    sweep = run(cfg, progress=False)
    plan = make_plan(cfg)
    assert compared == [c.label for c in plan.checkpoints]
    stored = Sweep(sweep.path).results
    assert stored["roi_score"].dims == ("checkpoint", "layer", "subject", "roi")
    assert list(stored.roi.values) == plan.rois
    assert set(sweep_run._variables(plan)) <= set(stored.data_vars)
