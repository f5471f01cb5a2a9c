"""Sweeps and the report on LeBel 2023 (ds003020) data with its surfaces, on fixtures in the real formats.

Two subjects with different volumes (6 mm voxels with GIfTI surfaces; 7 mm voxels stored
right to left with pycortex ``.npz`` surfaces), written by
:func:`brainalign.surfaces.testing.write_lebel_anatomy`, ``.hf5`` responses and TextGrids
as ds003020 has them (:func:`brainalign.datasets.lebel2023.write`), and a third subject,
UTS09, without a FreeSurfer folder. The responses of the voxels under the fsaverage5
``L_pSTS`` language ROI (found from the fixture's ground truth: the subject vertices that
are L_pSTS vertices of fsaverage5, and the voxels at their cortical ribbon) follow the
stories' word rate; every other voxel is noise. So the sweep must find L_pSTS far above
the other language ROIs, on each subject's voxels, and its fsaverage5 flatmap must light
up there.
"""

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from brainalign import ValidationError
from brainalign.surfaces.testing import write_lebel_anatomy

FIXTURE = {
    "UTS01": dict(voxel_size=6.0, rotation_deg=10.0, scale=1.05, shift=(2.0, -3.0, 4.0), surface_format="gii",
                  masks=("thick",), seed=1),
    "UTS02": dict(voxel_size=7.0, rotation_deg=-15.0, scale=0.95, shift=(-4.0, 6.0, 0.0), surface_format="npz",
                  flip_x=True, masks=("thick",), seed=2),
    "UTS09": dict(voxel_size=7.0, freesurfer=False, masks=("thick",), seed=9),
}
PLANTED = "L_pSTS"
FAR = ["R_TP", "R_aSTS", "R_pSTS", "R_AG", "R_IFGorb", "R_IFGtri", "R_MFG", "L_MFG", "L_IFGorb", "L_TP"]


def _columns(volume_ijk: np.ndarray, mask_ijk: np.ndarray) -> np.ndarray:
    """pycortex's column order: the mask's voxels with k slowest, then j, then i fastest."""
    return volume_ijk.transpose(2, 1, 0)[mask_ijk.transpose(2, 1, 0)]


def _planted_voxels(anat) -> np.ndarray:
    """(i, j, k) bool: voxels whose centre is within half a voxel diagonal of the mid-ribbon
    of a subject vertex that is an L_pSTS vertex of fsaverage5 (the fixture's truth)."""
    from scipy.spatial import cKDTree

    from brainalign.rois import load_atlas

    fs5 = load_atlas("language")
    inside = fs5.mask(PLANTED)[anat.fsaverage_index()]
    vox = float(abs(anat.affine[0, 0]))
    dist, _ = cKDTree(anat.fiducial_mm[inside]).query(anat.voxel_centres_mm().reshape(-1, 3),
                                                       distance_upper_bound=vox)
    return np.isfinite(dist).reshape(anat.shape)


@pytest.fixture(scope="module")
def lebel(tmp_path_factory):
    from brainalign.datasets import simulate
    from brainalign.datasets.simulated import word_embedding_features
    from brainalign.timing import word_rate

    root = tmp_path_factory.mktemp("ds003020")
    sim = simulate(n_subjects=3, stories=4, space=20, features=word_embedding_features(4))
    sim.to_lebel(root)
    pre = root / "derivative" / "preprocessed_data"
    rng = np.random.default_rng(0)
    planted = {}
    for sim_name, subj in zip(("sim01", "sim02", "sim03"), FIXTURE):
        os.rename(pre / sim_name, pre / subj)
        anat = write_lebel_anatomy(root, subj, **FIXTURE[subj])
        mask = anat.masks["thick"]
        hot = _columns(_planted_voxels(anat), mask)
        planted[subj] = hot
        for name, story in sim.stories.items():
            rate = word_rate(story)
            signal = np.roll((rate - rate.mean()) / rate.std(), 2)  # two TRs of haemodynamic lag
            data = rng.standard_normal((story.n_trs, hot.size))
            data[:, hot] += 2.0 * signal[:, None]
            with h5py.File(pre / subj / f"{name}.hf5", "w") as f:
                f.create_dataset("data", data=data.astype(np.float32))
    return root, sim.test_stories, planted


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from brainalign.datasets import _corpus
    from brainalign.training import train_tiny

    out = tmp_path_factory.mktemp("tiny")
    return train_tiny(_corpus.stories_dir(), out / "model", n_layers=2, hidden=32, heads=2, seq_len=32,
                      steps=30, batch_size=4, checkpoints=5, seed=0)


def _config(root: Path, test, model_dir: Path, store: Path, subjects=("UTS01", "UTS02"), **rois) -> dict:
    return {
        "dataset": {"name": "lebel2023", "root": str(root), "subjects": list(subjects),
                    "options": {"test_stories": list(test)}},
        "model": {"name": str(model_dir), "revisions": ["checkpoint-3", "checkpoint-30"]},
        "layers": "all",
        "features": {"context_tokens": 32, "batch_size": 8},
        "encoding": {"alphas": {"logspace": [0, 4, 5]}, "n_folds": 3},
        "rois": {"atlas": "language", **rois},
        "output": {"store": str(store)},
    }


@pytest.fixture(scope="module")
def sweep(lebel, tiny_model, tmp_path_factory):
    from brainalign.sweep import run

    root, test, _ = lebel
    store = tmp_path_factory.mktemp("sweep") / "lebel.zarr"
    return run(_config(root, test, tiny_model.out_dir, store), progress=False)


def _non_background(png: Path) -> float:
    """Fraction of a PNG's pixels that are strongly coloured (not white, grey or black)."""
    import matplotlib.image as mpimg

    img = mpimg.imread(str(png))[..., :3].astype(np.float64)
    spread = img.max(axis=-1) - img.min(axis=-1)
    return float((spread > 0.25).mean())


def test_lebel_sweep_stores_language_rois_on_fsaverage5(sweep, lebel):
    from brainalign.datasets import load
    from brainalign.rois import aggregate, load_atlas
    from brainalign.surfaces import project

    root, test, planted = lebel
    res = sweep.results
    fs5 = load_atlas("language")
    # one target axis for both subjects: fsaverage5's vertices, left then right
    assert res.attrs["space"] == "fsaverage5" and res.sizes["target"] == 20484
    assert list(res.hemi.values[[0, 10241, 10242, -1]]) == ["L", "L", "R", "R"]
    assert list(res.roi.values) == fs5.roi_names
    proj = res.attrs["projection"]
    assert proj["to"] == "fsaverage5" and set(proj["subjects"]) == {"UTS01", "UTS02"}
    assert proj["subjects"]["UTS02"]["n_voxels"] == int(planted["UTS02"].size)
    assert proj["subjects"]["UTS01"]["sphere_reg"][0].endswith("UTS01/surf/lh.sphere.reg")
    assert "ds003020's derivative has no preprocessed single repeats" in res.attrs["ceiling_note"]
    assert "ceiling" not in res  # no repeats, no ceiling
    # the planted ROI stands out in every subject (its best layer and checkpoint), the far ones do not
    best = res["roi_score"].max(["checkpoint", "layer"])
    for subj in ("UTS01", "UTS02"):
        b = best.sel(subject=subj)
        assert float(b.sel(roi=PLANTED)) > 0.4, subj
        assert float(b.sel(roi=FAR).max()) < 0.25, subj
    # ROI scores are taken on each subject's voxels: the same numbers as aggregating the
    # voxel results with the atlas carried to the voxels; the maps are their projection
    ds = load("lebel2023", root, subjects=["UTS01", "UTS02"], test_stories=test)
    ck, layer = "checkpoint-30", 2
    cell = res.sel(checkpoint=ck, layer=layer)
    for subj in ("UTS01", "UTS02"):
        sp = ds.space(subj)
        vox = load_atlas("language", sp)
        hot = vox.mask(PLANTED)
        # the atlas carried to the voxels finds planted voxels (the fixture's truth) and only
        # those; planted voxels that no vertex's line meets (the mask is wider than the ribbon) stay 0
        assert np.sum(hot & planted[subj]) / hot.sum() > 0.9 and hot.sum() >= 0.3 * planted[subj].sum()
        fs_map = cell["score"].sel(subject=subj).values
        assert np.nanmean(fs_map[fs5.mask(PLANTED)]) > 0.3 > np.nanmean(fs_map[fs5.mask("R_pSTS")])
    import xarray as xr

    # a tiny voxel result with known values: aggregate(dataset=) averages each subject's own voxels
    T = max(ds.space(s).n_targets for s in ds.subjects)
    vals = np.full((2, T), np.nan, np.float32)
    for i, subj in enumerate(("UTS01", "UTS02")):
        n = ds.space(subj).n_targets
        vals[i, :n] = np.where(load_atlas("language", ds.space(subj)).mask(PLANTED), 1.0, 0.0)
    vox_res = xr.Dataset({"score": (("subject", "target"), vals)},
                         coords={"subject": ["UTS01", "UTS02"], "target": np.arange(T)}, attrs={"space": "mixed"})
    agg = aggregate(vox_res, atlas="language", dataset=ds)
    np.testing.assert_allclose(agg["score"].sel(roi=PLANTED).values, [1.0, 1.0])
    np.testing.assert_allclose(agg["score"].sel(roi="R_AG").values, [0.0, 0.0])
    assert set(agg["n_targets"].dims) == {"subject", "roi"} and int(agg["n_targets"].sel(subject="UTS02", roi=PLANTED)) > 0
    with pytest.raises(ValidationError, match=r"pass dataset= .*surfaces\.project"):
        aggregate(vox_res, atlas="language")
    on_fs5 = project(vox_res, ds)
    assert np.nanmean(on_fs5["score"].sel(subject="UTS01").values[fs5.mask(PLANTED)]) > 0.8


def test_lebel_report_shows_roi_curves_heatmap_and_flatmaps(sweep, tmp_path):
    from brainalign.sweep.analyze import report
    from brainalign.sweep.analyze import roi_curves

    curves = roi_curves(sweep.results)
    assert PLANTED in curves.roi.values and np.isfinite(curves["score_mean"].sel(roi=PLANTED).values).all()
    figs = tmp_path / "figs"
    out = report(sweep.path, tmp_path / "report.html", figures_dir=figs, internal=False)
    html = out.read_text()
    assert "Cortical maps" in html and "Layers × checkpoints" in html
    assert "Noise ceiling: none for these data. ds003020&#x27;s derivative has no preprocessed single repeats" in html \
        or "Noise ceiling: none for these data. ds003020's derivative has no preprocessed single repeats" in html
    assert "projected to fsaverage5" in html
    # the lead ROI of the report is the planted one
    assert f"{PLANTED}: layer × checkpoint" in html or PLANTED in html
    for name in ("curves.png", "layer_heatmap.png", "flatmap_best.png"):
        assert _non_background(figs / name) > 0.01, name  # real figures, drawn in colour
    # the thresholded map colours only the significant vertices (the planted ROI, under its outline)
    assert _non_background(figs / "flatmap_significant.png") > 0.003
    assert (figs / "movie.gif").stat().st_size > 1000
    assert html.count("data:image/png;base64,") >= 4


def test_flatmap_of_a_lebel_store_lights_up_the_planted_roi(sweep, tmp_path):
    import matplotlib as mpl

    from brainalign.plotting import flatmap
    from brainalign.rois import load_atlas
    from brainalign.sweep.analyze import flatmap_from_store

    out = flatmap_from_store(sweep.path, "checkpoint-30", 2, out=tmp_path / "map.png")
    assert _non_background(out) > 0.005
    # drawn on fsaverage5: the planted ROI's vertices are the top of the colour scale
    v = sweep.results["score"].sel(checkpoint="checkpoint-30", layer=2).mean("subject").values
    fig = flatmap(v, space="fsaverage5", vmin=0, vmax=0.3, cmap="viridis")
    assert fig is not None
    fs5 = load_atlas("language")
    top = np.nan_to_num(v) >= 0.3
    assert top[fs5.mask(PLANTED)].mean() > 0.5 and top[fs5.mask("R_pSTS")].mean() < 0.05
    mpl.pyplot.close("all")


def test_uts09_without_freesurfer_is_refused_by_name(lebel, tiny_model, tmp_path):
    from brainalign.sweep import make_plan

    root, test, _ = lebel
    cfg = _config(root, test, tiny_model.out_dir, tmp_path / "never.zarr", subjects=("UTS01", "UTS09"))
    with pytest.raises(ValidationError, match=r"subject\(s\) UTS09 cannot be projected there \(UTS09: UTS09 has no "
                                              r"FreeSurfer subject folder .*rois\.space: native"):
        make_plan(cfg)
    with pytest.raises(ValidationError, match=r"rois.atlas: 'language' needs an fsaverage space"):
        make_plan(_config(root, test, tiny_model.out_dir, tmp_path / "never.zarr", subjects=("UTS01", "UTS09"),
                          space="native"))
    plan = make_plan({**cfg, "rois": {"atlas": "whole_cortex", "space": "native"}})
    assert plan.projection is None and plan.rois == ["whole_cortex"] and plan.space == "UTS01"
    auto = make_plan(_config(root, test, tiny_model.out_dir, tmp_path / "never.zarr"))
    assert auto.projection == "fsaverage5" and auto.n_targets == 20484
    assert not (tmp_path / "never.zarr").exists()
