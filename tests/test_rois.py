"""Surfaces, atlases and ROI aggregation (issue 6, first part)."""

import gzip
import socket

import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from brainalign import DataNotFoundError, Space, ValidationError
from brainalign.rois import Atlas, aggregate, load_atlas, roi_values
from brainalign.surfaces import load_mesh, medial_wall, resample, sulcal_depth
from brainalign.surfaces import meshes as meshes_mod
from brainalign.surfaces.atlases import LANGUAGE_ROIS

N5 = 10242


@pytest.fixture
def nilearn_home(tmp_path, monkeypatch):
    """An empty nilearn data home, and caches that see it."""
    home = tmp_path / "nilearn_data"
    home.mkdir()
    monkeypatch.setenv("NILEARN_DATA", str(home))
    monkeypatch.delenv("NILEARN_SHARED_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    meshes_mod.clear_caches()
    yield home
    meshes_mod.clear_caches()


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ----------------------------------------------------------------------------- meshes


def test_fsaverage5_meshes_and_medial_wall():
    flat = load_mesh("fsaverage5", "flat")
    pial = load_mesh("fsaverage5", "pial")
    assert flat["left"].coords.shape == (N5, 3) and pial["right"].faces.shape == (20480, 3)
    wall = medial_wall("fsaverage5")
    assert wall.shape == (2 * N5,) and wall.dtype == bool
    # the medial wall is the part of the sphere the flat patch leaves out: a few % of vertices
    for h, hemi in enumerate(("left", "right")):
        w = wall[h * N5 : (h + 1) * N5]
        assert 500 < w.sum() < 1200
        assert not np.isin(np.flatnonzero(w), flat[hemi].faces).any()
        # and it lies on the medial side: |x| of the pial surface is small there
        x = pial[hemi].coords[:, 0]
        assert np.median(np.abs(x[w])) < np.median(np.abs(x[~w])) - 10
    assert sulcal_depth().shape == (2 * N5,)


def _subdivide(coords, faces):
    """One icosahedral subdivision step: old vertices first, then edge midpoints on the sphere."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    uniq, inv = np.unique(edges, axis=0, return_inverse=True)
    inv = inv.ravel()
    r = np.linalg.norm(coords, axis=1).mean()
    mid = coords[uniq[:, 0]] + coords[uniq[:, 1]]
    mid = mid / np.linalg.norm(mid, axis=1, keepdims=True) * r
    n = len(coords)
    m01, m12, m20 = (n + inv[i * len(faces) : (i + 1) * len(faces)] for i in range(3))
    a, b, c = faces.T
    new_faces = np.concatenate(
        [np.c_[a, m01, m20], np.c_[b, m12, m01], np.c_[c, m20, m12], np.c_[m01, m12, m20]]
    )
    return np.vstack([coords, mid]), new_faces, uniq


def _write_gifti_mesh(path, coords, faces):
    img = nib.gifti.GiftiImage(
        darrays=[
            nib.gifti.GiftiDataArray(coords.astype(np.float32), intent="NIFTI_INTENT_POINTSET"),
            nib.gifti.GiftiDataArray(faces.astype(np.int32), intent="NIFTI_INTENT_TRIANGLE"),
        ]
    )
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=1))


def test_resample_down_keeps_nested_values(rng):
    n6 = 40962
    fine = rng.standard_normal((3, 2 * n6))
    coarse = resample(fine, "fsaverage6", "fsaverage5")
    assert coarse.shape == (3, 2 * N5)
    np.testing.assert_array_equal(coarse[:, :N5], fine[:, :N5])
    np.testing.assert_array_equal(coarse[:, N5:], fine[:, n6 : n6 + N5])
    da = xr.DataArray(
        fine, dims=("layer", "target"), coords={"target": np.arange(2 * n6), "hemi": ("target", ["L"] * n6 + ["R"] * n6)},
        attrs={"space": "fsaverage6"},
    )
    out = resample(da, "fsaverage6", "fsaverage5")
    np.testing.assert_array_equal(out.values, coarse)
    assert out.attrs["space"] == "fsaverage5" and (out.hemi.values[N5:] == "R").all()
    with pytest.raises(ValidationError, match="40962"):
        resample(np.zeros(100), "fsaverage6", "fsaverage5")


def test_resample_up_needs_the_fine_sphere(nilearn_home, rng):
    with pytest.raises(DataNotFoundError, match="fetch_surf_fsaverage"):
        resample(np.zeros(2 * N5), "fsaverage5", "fsaverage6")
    # write an fsaverage6 sphere made the way FreeSurfer makes it: fsaverage5 subdivided once
    d = nilearn_home / "fsaverage6"
    d.mkdir()
    sphere = load_mesh("fsaverage5", "sphere")
    mids = []
    for hemi in ("left", "right"):
        c, f, edges = _subdivide(np.asarray(sphere[hemi].coords), np.asarray(sphere[hemi].faces))
        assert len(c) == 40962
        _write_gifti_mesh(d / f"sphere_{hemi}.gii.gz", c, f)
        mids.append(edges)
    meshes_mod.clear_caches()
    vals = rng.standard_normal(2 * N5)
    up = resample(vals, "fsaverage5", "fsaverage6")
    assert up.shape == (2 * 40962,)
    np.testing.assert_array_equal(up[:N5], vals[:N5])
    np.testing.assert_array_equal(up[40962 : 40962 + N5], vals[N5:])
    # every midpoint takes the value of one of its edge's two ends (nearest neighbour)
    new_left = up[N5:40962]
    ends = vals[:N5][mids[0]]
    assert np.all((new_left == ends[:, 0]) | (new_left == ends[:, 1]))
    # and down again is the identity
    np.testing.assert_array_equal(resample(up, "fsaverage6", "fsaverage5"), vals)
    # the fsaverage6 medial wall and atlases come along
    wall6 = medial_wall("fsaverage6")
    np.testing.assert_array_equal(wall6[:N5], medial_wall("fsaverage5")[:N5])
    lang6 = load_atlas("language", "fsaverage6")
    np.testing.assert_array_equal(lang6.labels[:N5], load_atlas("language").labels[:N5])


# ----------------------------------------------------------------------------- atlases


def test_offline_atlases_load_with_the_network_off(nilearn_home, no_network):
    whole = load_atlas("whole_cortex")
    assert whole.names == {1: "whole_cortex"}
    np.testing.assert_array_equal(whole.labels == 1, ~medial_wall())

    seitz = load_atlas("seitzman2018")
    assert {"L_DefaultMode", "R_DefaultMode", "L_Auditory", "R_Visual"} <= set(seitz.roi_names)
    assert (seitz.labels[medial_wall()] == 0).all()
    # left-hemisphere networks only on the left hemisphere
    left_codes = [k for k, v in seitz.names.items() if v.startswith("L_")]
    assert not np.isin(seitz.labels[N5:], left_codes).any()
    rois = load_atlas("seitzman2018_rois")
    assert len(rois.names) > 150

    lang = load_atlas("language")
    assert len(lang.names) == 2 * len(LANGUAGE_ROIS)
    mid = load_mesh("fsaverage5", "midthickness")
    for name, (x, y, z) in LANGUAGE_ROIS.items():
        for hemi, sign, off in (("L", 1, 0), ("R", -1, N5)):
            m = lang.mask(f"{hemi}_{name}")
            assert 20 < m.sum() < 400, name
            assert not m[N5 - off : 2 * N5 - off].any()  # only on its own hemisphere
            coords = mid["left" if hemi == "L" else "right"].coords[m[off : off + N5]]
            dist = np.linalg.norm(coords - [sign * x, y, z], axis=1)
            assert dist.max() <= 12.0 + 1e-9
    # nothing was written to nilearn's data home
    assert list(nilearn_home.iterdir()) == []


def test_destrieux_offline_error_and_cached_copy(nilearn_home, no_network, rng):
    with pytest.raises(DataNotFoundError, match="download=True"):
        load_atlas("destrieux")
    # a cached copy in nilearn's layout is read without any network
    d = nilearn_home / "destrieux_surface"
    d.mkdir()
    names = [b"Unknown", b"G_temporal_middle", b"S_temporal_sup", b"Medial_wall"]
    ctab = np.array([[25, 5, 25, 0, 0], [160, 100, 40, 0, 1], [20, 60, 220, 0, 2], [80, 80, 80, 0, 3]])
    per_hemi = {}
    for h in ("lh", "rh"):
        lab = rng.integers(0, 4, N5)
        per_hemi[h] = lab
        nib.freesurfer.write_annot(str(d / f"{h}.aparc.a2009s.annot"), lab, ctab, names, fill_ctab=True)
    atlas = load_atlas("destrieux")
    assert set(atlas.roi_names) == {"L_G_temporal_middle", "L_S_temporal_sup", "R_G_temporal_middle", "R_S_temporal_sup"}
    np.testing.assert_array_equal(atlas.mask("L_S_temporal_sup")[:N5], per_hemi["lh"] == 2)
    np.testing.assert_array_equal(atlas.mask("R_G_temporal_middle")[N5:], per_hemi["rh"] == 1)
    assert (atlas.labels[:N5][per_hemi["lh"] == 3] == 0).all()  # medial wall left out


def test_user_annot_label_gifti_and_label_files(tmp_path, rng):
    names = [b"unknown", b"roiA", b"roiB"]
    ctab = np.array([[0, 0, 0, 0, 0], [200, 0, 0, 0, 1], [0, 200, 0, 0, 2]])
    lab = {h: rng.integers(0, 3, N5) for h in ("lh", "rh")}
    for h in lab:
        nib.freesurfer.write_annot(str(tmp_path / f"{h}.mine.annot"), lab[h], ctab, names, fill_ctab=True)
    a = load_atlas(tmp_path / "lh.mine.annot")
    assert a.space == "fsaverage5" and set(a.roi_names) == {"L_roiA", "L_roiB", "R_roiA", "R_roiB"}
    np.testing.assert_array_equal(a.mask("R_roiB")[N5:], lab["rh"] == 2)

    # label GIfTI (one per hemisphere) with a label table
    for h, hh in (("lh", "L"), ("rh", "R")):
        img = nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(lab[h].astype(np.int32), intent="NIFTI_INTENT_LABEL")])
        for k, nm in ((0, "???"), (1, "roiA"), (2, "roiB")):
            gl = nib.gifti.GiftiLabel(key=k)
            gl.label = nm
            img.labeltable.labels.append(gl)
        nib.save(img, str(tmp_path / f"atlas_hemi-{hh}.label.gii"))
    g = load_atlas([tmp_path / "atlas_hemi-L.label.gii", tmp_path / "atlas_hemi-R.label.gii"])
    for roi in a.roi_names:
        np.testing.assert_array_equal(g.mask(roi), a.mask(roi))
    # found the right hemisphere by its name
    g2 = load_atlas(str(tmp_path / "atlas_hemi-L.label.gii"))
    np.testing.assert_array_equal(g2.labels, g.labels)

    # FreeSurfer .label files
    verts = np.array([5, 17, 400])
    with open(tmp_path / "lh.spot.label", "w") as f:
        f.write("#!ascii label\n%d\n" % len(verts))
        for v in verts:
            f.write(f"{v} 0.0 0.0 0.0 0.0\n")
    lf = load_atlas([tmp_path / "lh.spot.label"], "fsaverage5")
    assert lf.names == {1: "L_spot"} and np.flatnonzero(lf.labels).tolist() == verts.tolist()

    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_atlas(tmp_path / "lh.missing.annot")
    (tmp_path / "lh.bad.annot").write_bytes(b"junk")
    (tmp_path / "rh.bad.annot").write_bytes(b"junk")
    with pytest.raises(ValidationError, match="lh.bad.annot"):
        load_atlas(tmp_path / "lh.bad.annot")


def test_volume_label_atlas_and_pycortex_message(tmp_path, rng):
    mask = np.zeros((6, 7, 5), bool)
    mask[1:5, 1:6, 1:4] = True
    vol = rng.integers(0, 4, mask.shape).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "labels.nii.gz"))
    space = Space.volume("UTS01", mask, affine=np.eye(4))
    a = load_atlas(tmp_path / "labels.nii.gz", space, names={1: "one", 2: "two", 3: "three"})
    np.testing.assert_array_equal(a.labels, vol[mask])
    assert a.space == "UTS01" and a.names[2] == "two"
    with pytest.raises(ValidationError, match="shape"):
        load_atlas(tmp_path / "labels.nii.gz", Space.volume("x", np.ones((3, 3, 3), bool)))
    with pytest.raises(ValidationError, match="volume"):
        load_atlas("language", space)
    # ROI means of volume results through the volume atlas
    n = int(mask.sum())
    res = xr.Dataset(
        {"score": (("subject", "target"), rng.normal(size=(2, n)))},
        coords={"subject": ["UTS01", "UTS02"], "target": np.arange(n)}, attrs={"space": "UTS01"},
    )
    out = aggregate(res, atlas=a)
    np.testing.assert_allclose(out.score.sel(roi="two").values, res.score.values[:, vol[mask] == 2].mean(-1))
    with pytest.raises(ValidationError, match="volume space"):
        aggregate(res, atlas="language")
    # whole cortex of a volume (or mesh-free) space: every target
    whole = aggregate(res, atlas="whole_cortex")
    np.testing.assert_allclose(whole.score.sel(roi="whole_cortex").values, res.score.values.mean(-1))
    assert load_atlas("whole_cortex", space).labels.tolist() == [1] * n
    sim = Space(name="simulated500", kind="surface", hemi_sizes=(250, 250))
    assert load_atlas("whole_cortex", sim).n_targets == 500
    # pycortex is not installed here: the message says what to do
    try:
        import cortex  # noqa: F401
    except ImportError:
        with pytest.raises(DataNotFoundError, match="pip install pycortex"):
            load_atlas("pycortex:UTS01", space, xfm="UTS01_auto")


def test_atlas_validation():
    with pytest.raises(ValidationError, match="unknown atlas"):
        load_atlas("nope")
    with pytest.raises(ValidationError, match=">= 0"):
        Atlas("bad", "fsaverage5", np.full(2 * N5, -1), {})
    with pytest.raises(ValidationError, match="radius"):
        load_atlas("language", radius=0)


# ----------------------------------------------------------------------------- aggregation


def _small_results(rng, n_targets=2 * 642, nan_frac=0.02):
    C, L, S = 3, 4, 3
    score = rng.normal(0.05, 0.1, (C, L, S, n_targets))
    score[rng.random(score.shape) < nan_frac] = np.nan
    ceiling = rng.uniform(0.2, 0.8, (S, n_targets))
    pvalue = rng.uniform(0, 0.2, (C, L, S, n_targets))
    ds = xr.Dataset(
        {
            "score": (("checkpoint", "layer", "subject", "target"), score),
            "ceiling": (("subject", "target"), ceiling),
            "pvalue": (("checkpoint", "layer", "subject", "target"), pvalue),
        },
        coords={
            "checkpoint": ["step1", "step2", "step3"],
            "tokens": ("checkpoint", [1e6, 1e8, 1e10]),
            "layer": np.arange(L),
            "depth": ("layer", np.arange(L) / 3),
            "subject": ["a", "b", "c"],
            "target": np.arange(n_targets),
        },
        attrs={"space": "fsaverage3", "model": "tiny"},
    )
    return ds


def test_aggregate_equals_direct_numpy(rng):
    res = _small_results(rng)
    labels = rng.integers(0, 4, 2 * 642)
    atlas = Atlas("toy", "fsaverage3", labels, {1: "r1", 2: "r2", 3: "r3"})
    score, ceil, pv = res.score.values, res.ceiling.values, res.pvalue.values

    mean = aggregate(res, atlas=atlas, how="mean")
    assert mean.score.dims == ("roi", "checkpoint", "layer", "subject")
    assert list(mean.roi.values) == ["r1", "r2", "r3"]
    for j, code in enumerate((1, 2, 3)):
        m = labels == code
        want = np.nanmean(score[..., m], axis=-1)
        np.testing.assert_allclose(mean.score.values[j], want, rtol=1e-12)
        want_mean = want.mean(-1)
        want_sem = want.std(-1, ddof=1) / np.sqrt(3)
        np.testing.assert_allclose(mean.score_mean.values[j], want_mean, rtol=1e-12)
        np.testing.assert_allclose(mean.score_sem.values[j], want_sem, rtol=1e-10)
        # ceiling-normalised: ROI mean score / ROI mean ceiling over the same targets
        cm = ceil[:, m].mean(-1)  # (subject,)
        np.testing.assert_allclose(mean.score_normalised.values[j], want / cm, rtol=1e-12)
        # best layer per checkpoint from the subject mean, and its relative depth
        best = want_mean.argmax(axis=1)
        np.testing.assert_array_equal(mean.best_layer.values[j], best)
        np.testing.assert_allclose(mean.best_depth.values[j], best / 3)
        np.testing.assert_allclose(mean.best_score.values[j], want_mean.max(axis=1))
        assert mean.n_targets.values[j] == m.sum()

        # top 10%: mean of the ceil(0.1 n) best finite values
        k = int(np.ceil(0.1 * m.sum()))
        flat = score[..., m].reshape(-1, m.sum())
        want_top = np.array([np.sort(r[np.isfinite(r)])[::-1][:k].mean() for r in flat]).reshape(score.shape[:-1])
        top = aggregate(res, atlas=atlas, how="top10")
        np.testing.assert_allclose(top.score.values[j], want_top, rtol=1e-12)

        frac = aggregate(res, atlas=atlas, how="fraction_significant", alpha=0.05)
        np.testing.assert_allclose(frac.fraction_significant.values[j], (pv[..., m] < 0.05).mean(-1), rtol=1e-12)
    assert mean.tokens.values.tolist() == [1e6, 1e8, 1e10]
    assert mean.attrs["atlas"] == "toy" and mean.attrs["how"] == "mean" and mean.attrs["model"] == "tiny"


def test_aggregate_significant_var_subset_and_errors(rng):
    res = _small_results(rng, nan_frac=0)
    labels = np.repeat([1, 2], 642)
    atlas = Atlas("halves", "fsaverage3", labels, {1: "L", 2: "R"})
    sig = np.zeros(res.score.shape, bool)
    sig[..., :100] = True  # 100 of 642 in the first ROI
    res["significant"] = (res.score.dims, sig)
    out = aggregate(res, atlas=atlas, how="fraction_significant")
    np.testing.assert_allclose(out.fraction_significant.sel(roi="L").values, 100 / 642)
    np.testing.assert_allclose(out.fraction_significant.sel(roi="R").values, 0.0)
    assert "score_normalised" not in out

    # results on a subset of targets, indexed by the target coordinate
    sub = res.isel(target=np.arange(600, 700))
    got = aggregate(sub, atlas=atlas)
    np.testing.assert_allclose(got.score.sel(roi="L").values, res.score.values[..., 600:642].mean(-1))
    # a single layer, no subjects: no SEM, no best layer
    single = aggregate(res.score.isel(layer=0, subject=0), atlas=atlas)
    assert "best_layer" not in single and "score_sem" not in single

    with pytest.raises(ValidationError, match="how"):
        aggregate(res, atlas=atlas, how="max")
    with pytest.raises(ValidationError, match="pvalue"):
        aggregate(res.drop_vars(["pvalue", "significant"]), atlas=atlas, how="fraction_significant")
    with pytest.raises(ValidationError, match="target"):
        aggregate(res.isel(target=0), atlas=atlas)
    with pytest.raises(ValidationError, match="1000"):
        aggregate(res.isel(target=slice(0, 1000)).assign_coords(target=np.arange(1000) + 5000), atlas=atlas)


def test_aggregate_named_atlas_on_fsaverage5(rng):
    n = 2 * N5
    res = xr.Dataset(
        {"score": (("layer", "subject", "target"), rng.normal(0, 0.01, (2, 2, n)))},
        coords={"layer": [0, 1], "subject": ["s1", "s2"], "target": np.arange(n)},
        attrs={"space": "fsaverage5"},
    )
    lang = load_atlas("language")
    res["score"][1, :, lang.mask("L_pSTS")] = 0.5  # planted: layer 1, left pSTS
    out = aggregate(res, atlas="language")
    assert out.best_layer.sel(roi="L_pSTS").item() == 1
    assert out.score_mean.sel(roi="L_pSTS", layer=1).item() == pytest.approx(0.5)
    assert abs(out.score_mean.sel(roi="R_pSTS", layer=1).item()) < 0.01
    whole = aggregate(res, atlas="whole_cortex")
    assert whole.n_targets.item() == int((~medial_wall()).sum())


def test_roi_values_direct():
    vals = np.array([[1.0, 2.0, np.nan, 4.0, 10.0]])
    labels = np.array([1, 1, 1, 2, 0])
    np.testing.assert_allclose(roi_values(vals, labels, [1, 2]), [[1.5, 4.0]])
    np.testing.assert_allclose(roi_values(vals, labels, [1, 2], "top10"), [[2.0, 4.0]])
    np.testing.assert_allclose(roi_values(vals, labels, [1, 2], "median"), [[1.5, 4.0]])
    assert np.isnan(roi_values(np.full((1, 5), np.nan), labels, [1])[0, 0])
