"""LeBel 2023 subject volumes -> subject surfaces -> fsaverage, on fixtures in ds003020's real formats.

Two subjects with different volumes (3 mm voxels, GIfTI surfaces, ``mask_cortical`` vs
4 mm voxels stored right to left and turned, pycortex ``.npz`` surfaces as UTS02's,
``mask_thick``), written by :func:`brainalign.surfaces.testing.write_lebel_anatomy` with
nibabel (NIfTI, GIfTI, FreeSurfer geometry), a JSON ``matrices.xfm`` and ``.hf5``
responses via h5py.
"""

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from brainalign import DataNotFoundError, NotDownloadedError, ValidationError
from brainalign.cli import main
from brainalign.datasets import lebel2023, load, simulate
from brainalign.datasets.simulated import word_embedding_features
from brainalign.surfaces import project
from brainalign.surfaces.subject import SubjectSpace, apply_mapper, line_mapper, read_surface, sphere_mapper
from brainalign.surfaces.testing import write_lebel_anatomy

N5 = 10242
SUBJECTS = {
    "UTS01": dict(voxel_size=3.0, rotation_deg=10.0, scale=1.05, shift=(2.0, -3.0, 4.0), surface_format="gii", seed=1),
    "UTS02": dict(voxel_size=4.0, rotation_deg=-15.0, scale=0.95, shift=(-4.0, 6.0, 0.0), surface_format="npz",
                  flip_x=True, seed=2),
}
USES = {"UTS01": "cortical", "UTS02": "thick"}  # the mask each subject's responses are in


def pycortex_columns(volume_ijk: np.ndarray, mask_ijk: np.ndarray) -> np.ndarray:
    """pycortex's column order written out by hand: (z, y, x) array, C order, i.e. k, then j, then i fastest."""
    I, J, K = mask_ijk.shape
    out = []
    for k in range(K):
        for j in range(J):
            sel = np.flatnonzero(mask_ijk[:, j, k])
            out.extend(volume_ijk[sel, j, k].tolist())
    return np.asarray(out, dtype=np.float64)


def code_volume(shape) -> np.ndarray:
    """Each voxel's value encodes its own (i, j, k): 10000 i + 100 j + k (exact in float32)."""
    i, j, k = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return (10000 * i + 100 * j + k).astype(np.float64)


def _write_hf5(path: Path, data: np.ndarray) -> None:
    path.unlink(missing_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.asarray(data, np.float32))


@pytest.fixture(scope="module")
def lebel_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds003020")
    sim = simulate(n_subjects=2, stories=3, space=20, features=word_embedding_features(4))
    sim.to_lebel(root)
    pre = root / "derivative" / "preprocessed_data"
    anat = {}
    for sim_name, subj in zip(("sim01", "sim02"), SUBJECTS):
        os.rename(pre / sim_name, pre / subj)
        a = write_lebel_anatomy(root, subj, **SUBJECTS[subj])
        anat[subj] = a
        cols = pycortex_columns(code_volume(a.shape), a.masks[USES[subj]])
        for h in sorted((pre / subj).glob("*.hf5")):
            with h5py.File(h, "r") as f:
                rows = f["data"].shape[0]
            _write_hf5(h, np.tile(cols, (rows, 1)) + np.arange(rows)[:, None])
    return root, anat, sim.test_stories


@pytest.fixture(scope="module")
def ds(lebel_root):
    root, _, test = lebel_root
    return load("lebel2023", root, test_stories=test)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.sum(a & b) / (np.sum(a) + np.sum(b))


def _blob(anat, subject: str, vertex: int, radius: float = 25.0):
    """Columns of a ball of 1s (0 elsewhere) around a subject vertex; the vertices truly in it."""
    centre = anat.fiducial_mm[vertex]
    vol = (np.linalg.norm(anat.voxel_centres_mm() - centre, axis=-1) <= radius).astype(np.float64)
    cols = pycortex_columns(vol, anat.masks[USES[subject]])
    inside = np.linalg.norm(anat.fiducial_mm - centre, axis=1) <= radius
    return cols, inside


# ----------------------------------------------------------------------------- column order and masks


@pytest.mark.parametrize("subject", list(SUBJECTS))
def test_columns_are_pycortex_order(ds, lebel_root, subject):
    _, anat, _ = lebel_root
    a = anat[subject]
    space = ds.space(subject)
    assert isinstance(space, SubjectSpace)
    row0 = ds.responses(subject, ds.stories_of(subject)[0])[0]
    vol = space.unmask(row0)  # nibabel (i, j, k) order
    mask = a.masks[USES[subject]]
    code = code_volume(a.shape)
    assert vol.shape == a.shape
    np.testing.assert_array_equal(vol[mask], code[mask])
    assert np.isnan(vol[~mask]).all()
    np.testing.assert_array_equal(space.mask_volume(code), row0)
    np.testing.assert_array_equal(space.mask_ijk, mask)
    # the rule is not nibabel's C order: a test with that order would have failed
    assert not np.array_equal(code[mask], row0)
    np.testing.assert_allclose(space.affine, a.affine)
    img = space.to_nifti(row0)
    np.testing.assert_array_equal(np.asarray(img.dataobj)[mask], code[mask])


def test_the_mask_matching_the_columns_is_chosen(ds):
    assert Path(ds.space("UTS01").mask_file).name == "mask_cortical.nii.gz"
    assert Path(ds.space("UTS02").mask_file).name == "mask_thick.nii.gz"
    assert ds.info["surfaces"] == {"UTS01": "ok", "UTS02": "ok"}
    assert "no preprocessed single repeats" in ds.info["ceiling"]


def test_no_mask_matching_the_columns_names_the_files(lebel_root, tmp_path):
    root, anat, test = lebel_root
    copy = tmp_path / "ds"
    shutil.copytree(root, copy)
    for h in (copy / "derivative" / "preprocessed_data" / "UTS01").glob("*.hf5"):
        with h5py.File(h, "r") as f:
            rows = f["data"].shape[0]
        _write_hf5(h, np.ones((rows, 1234)))
    n_thick, n_cort = (int(anat["UTS01"].masks[k].sum()) for k in ("thick", "cortical"))
    with pytest.raises(ValidationError, match=rf"\.hf5 has 1234 voxel columns, but no mask of .*UTS01_auto has that "
                                              rf"many voxels \(mask_cortical\.nii\.gz: {n_cort} voxels; "
                                              rf"mask_thick\.nii\.gz: {n_thick} voxels\)"):
        load("lebel2023", copy, test_stories=test)
    ds = load("lebel2023", copy, test_stories=test, surfaces=False)  # still loads without the surfaces
    assert ds.space("UTS01").n_targets == 1234 and not isinstance(ds.space("UTS01"), SubjectSpace)


# ----------------------------------------------------------------------------- volume -> surface -> fsaverage


@pytest.mark.parametrize("subject,vertex", [("UTS01", 1234), ("UTS02", 1234), ("UTS01", N5 + 777), ("UTS02", N5 + 4321)])
def test_blob_lands_on_the_expected_vertices(ds, lebel_root, subject, vertex):
    _, anat, _ = lebel_root
    a, space = anat[subject], ds.space(subject)
    cols, inside = _blob(a, subject, vertex)
    assert inside.sum() > 100
    surf = space.to_surface(cols)
    assert surf.shape == (2 * N5,)
    assert _dice(surf > 0.5, inside) >= 0.9
    fs = space.to_fsaverage(cols, "fsaverage5")
    expected = np.zeros(2 * N5, bool)
    expected[a.fsaverage_index()[inside]] = True
    assert _dice(fs > 0.5, expected) >= 0.9
    # values are averages of 0s and 1s; far from the blob they are exactly 0
    finite = np.isfinite(fs)
    assert np.all((fs[finite] >= -1e-6) & (fs[finite] <= 1 + 1e-6))
    far = np.ones(2 * N5, bool)
    d = np.linalg.norm(a.fiducial_mm - a.fiducial_mm[vertex], axis=1)
    far[a.fsaverage_index()[d < 25.0 + 15.0]] = False
    assert np.all(fs[far & finite] == 0)


def test_both_subjects_share_fsaverage(ds, lebel_root):
    """The same anatomical spot (fsaverage vertex 1234's) in two different volumes lands on one fsaverage patch."""
    _, anat, _ = lebel_root
    maps = []
    for subj in SUBJECTS:
        a = anat[subj]
        v = int(np.flatnonzero(a.perm["left"] == 1234)[0])  # subject vertex of fsaverage vertex 1234
        cols, _ = _blob(a, subj, v, radius=25.0 * SUBJECTS[subj]["scale"])
        maps.append(ds.space(subj).to_fsaverage(cols) > 0.5)
    assert maps[0][1234] and maps[1][1234]
    assert _dice(maps[0], maps[1]) >= 0.85


def test_outside_the_mask_is_nan_never_zero(ds, lebel_root):
    _, anat, _ = lebel_root
    a, space = anat["UTS01"], ds.space("UTS01")
    # a volume that is 1e6 everywhere outside the mask and 1 inside: only the 1s can reach the surface
    vol = np.where(a.masks["cortical"], 1.0, 1e6)
    surf = space.to_surface(space.mask_volume(vol))
    finite = np.isfinite(surf)
    np.testing.assert_allclose(surf[finite], 1.0)
    # punch a hole in the mask: vertices whose lines only cross the hole are NaN, not 0
    centre = a.fiducial_mm[500]
    hole = np.linalg.norm(a.voxel_centres_mm() - centre, axis=-1) <= 15.0
    holed = space.mask & ~hole.T
    w, p = space.mesh("wm"), space.mesh("pia")
    M = line_mapper(np.vstack([w["left"].coords, w["right"].coords]), np.vstack([p["left"].coords, p["right"].coords]),
                    space.coord, holed)
    vals = apply_mapper(M, np.ones(int(holed.sum())))
    d = np.linalg.norm(a.fiducial_mm - centre, axis=1)
    assert np.isnan(vals[d < 15.0 - 2 * 3.0]).all()
    assert (d < 15.0 - 2 * 3.0).sum() > 20
    assert np.isfinite(vals[(d > 15.0 + 2 * 3.0) & finite]).all()
    assert not np.any(vals == 0)
    # NaN inputs are left out of a vertex's mean, not counted as zeros
    x = np.ones(space.n_targets)
    x[::2] = np.nan
    out = space.to_surface(x)
    np.testing.assert_allclose(out[np.isfinite(out)], 1.0)


def test_sphere_mapper_nnfr():
    from brainalign.surfaces import load_mesh

    sph = load_mesh("fsaverage5", "sphere")["left"].coords
    M = sphere_mapper(sph, sph[:2562])  # fsaverage4 is fsaverage5's first 2562 vertices
    assert M.shape == (2562, N5)
    np.testing.assert_allclose(np.asarray(M.sum(1)).ravel(), 1.0)
    assert np.all(np.asarray((M > 0).sum(0)).ravel() >= 1)  # every source vertex is used
    assert np.all(M.diagonal() > 0)  # each coarse vertex takes itself (its nearest)
    x = np.zeros(N5)
    x[:2562] = 1.0  # values only on the nested vertices
    y = M @ x
    assert np.all((y > 0) & (y <= 1))


# ----------------------------------------------------------------------------- project(results)


def _results(ds, anat):
    import xarray as xr

    T = max(ds.space(s).n_targets for s in SUBJECTS)
    score = np.full((2, 2, T), np.nan, np.float32)
    for si, subj in enumerate(SUBJECTS):
        a = anat[subj]
        v = int(np.flatnonzero(a.perm["left"] == 1234)[0])
        cols, _ = _blob(a, subj, v)
        n = cols.size
        score[0, si, :n] = cols
        score[1, si, :n] = 0.5 * cols
    return xr.Dataset(
        {"score": (("layer", "subject", "target"), score, {"long_name": "held-out Pearson r"}),
         "significant": (("layer", "subject", "target"), np.nan_to_num(score) > 0.5),
         "roi_score": (("layer", "subject", "roi"), np.zeros((2, 2, 1), np.float32))},
        coords={"layer": [3, 6], "depth": ("layer", [0.5, 1.0]), "subject": list(SUBJECTS), "target": np.arange(T),
                "roi": ["whole_cortex"]},
        attrs={"space": "mixed", "dataset": "lebel2023"},
    ), score


def test_project_results_to_fsaverage5(ds, lebel_root):
    from brainalign.rois import aggregate

    _, anat, _ = lebel_root
    res, score = _results(ds, anat)
    fs5 = project(res, ds, to="fsaverage5")
    assert fs5.attrs["space"] == "fsaverage5" and fs5.attrs["dataset"] == "lebel2023"
    assert dict(fs5.sizes) == {"layer": 2, "subject": 2, "target": 2 * N5, "roi": 1}
    assert fs5["significant"].dtype == bool
    assert list(fs5["hemi"].values[[0, -1]]) == ["L", "R"]
    np.testing.assert_array_equal(fs5["roi_score"].values, res["roi_score"].values)
    for si, subj in enumerate(SUBJECTS):
        n = ds.space(subj).n_targets
        want = ds.space(subj).to_fsaverage(score[:, si, :n])
        np.testing.assert_allclose(fs5["score"].values[:, si], want, rtol=1e-6)
        assert fs5["score"].values[0, si, 1234] > 0.5
    # subject-mean maps and every fsaverage atlas work on the projection as on fsaverage data
    mean = fs5["score"].mean("subject")
    assert mean.sel(layer=3).values[1234] > 0.5
    curves = aggregate(fs5, atlas="language")
    assert set(curves.sizes) >= {"layer", "subject", "roi"}
    assert np.isfinite(curves["score"].values).any()
    one = project(res["score"].sel(subject="UTS02"), ds, subjects=["UTS02"])
    np.testing.assert_allclose(one.values, fs5["score"].sel(subject="UTS02").values, rtol=1e-6)


def test_project_needs_surfaces(lebel_root, tmp_path):
    root, _, test = lebel_root
    ds = load("lebel2023", root, test_stories=test, surfaces=False)
    res, _ = _results(load("lebel2023", root, test_stories=test), lebel_root[1])
    with pytest.raises(ValidationError, match="no surfaces .*datasets check lebel2023"):
        project(res, ds)


# ----------------------------------------------------------------------------- caching


def test_maps_are_cached_on_disk_keyed_by_content(lebel_root, tmp_path, monkeypatch):
    from brainalign.config import cache_dir
    from brainalign.surfaces import subject as subject_mod

    root, _, test = lebel_root
    copy = tmp_path / "ds"
    shutil.copytree(root, copy)
    ds = load("lebel2023", copy, test_stories=test)
    x = np.ones(ds.space("UTS01").n_targets)
    first = ds.space("UTS01").to_fsaverage(x)
    files = sorted(p.name for p in (cache_dir() / "surface_maps").glob("*.npz"))
    assert any(f.startswith("volume_to_surface-") for f in files) and any(f.startswith("volume_to_fsaverage5-") for f in files)
    subject_mod.clear_memory_cache()

    def boom(*a, **k):
        raise AssertionError("rebuilt instead of read from the cache")

    monkeypatch.setattr(subject_mod, "line_mapper", boom)
    monkeypatch.setattr(subject_mod, "sphere_mapper", boom)
    np.testing.assert_array_equal(load("lebel2023", copy, test_stories=test).space("UTS01").to_fsaverage(x), first)
    # changing an input file's content changes the key: the map is rebuilt
    xf = copy / "derivative" / "pycortex-db" / "UTS01" / "transforms" / "UTS01_auto" / "matrices.xfm"
    raw = json.loads(xf.read_text())
    raw["coord"][0][3] += 1.0
    xf.write_text(json.dumps(raw))
    with pytest.raises(AssertionError, match="rebuilt"):
        load("lebel2023", copy, test_stories=test).space("UTS01").to_fsaverage(x)


# ----------------------------------------------------------------------------- bad inputs


def _copy(lebel_root, tmp_path):
    root, _, test = lebel_root
    copy = tmp_path / "ds"
    shutil.copytree(root, copy)
    return copy, test


def test_surfaces_with_different_vertex_counts_are_named(lebel_root, tmp_path):
    from brainalign.surfaces.testing import _write_gii

    copy, test = _copy(lebel_root, tmp_path)
    pia = copy / "derivative" / "pycortex-db" / "UTS01" / "surfaces" / "pia_lh.gii"
    m = read_surface(pia)
    _write_gii(pia, m.coords[:-5], m.faces[np.all(m.faces < len(m.coords) - 5, axis=1)])
    space = load("lebel2023", copy, test_stories=test).space("UTS01")
    with pytest.raises(ValidationError, match=r"pia_lh\.gii: 10237 vertices but .*wm_lh\.gii has 10242"):
        space.to_surface(np.ones(space.n_targets))


def test_sphere_reg_of_other_vertices_is_named(lebel_root, tmp_path):
    from nibabel.freesurfer import write_geometry

    copy, test = _copy(lebel_root, tmp_path)
    sph = copy / "derivative" / "freesurfer_subjdir" / "UTS02" / "surf" / "rh.sphere.reg"
    write_geometry(str(sph), np.random.default_rng(0).standard_normal((2562, 3)).astype(np.float32),
                   np.array([[0, 1, 2]], np.int32))
    space = load("lebel2023", copy, test_stories=test).space("UTS02")
    with pytest.raises(ValidationError, match=r"rh\.sphere\.reg: 2562 vertices but .*wm_rh\.npz has 10242"):
        space.to_fsaverage(np.ones(space.n_targets))


def test_missing_sphere_reg_is_named(lebel_root, tmp_path):
    copy, test = _copy(lebel_root, tmp_path)
    (copy / "derivative" / "freesurfer_subjdir" / "UTS01" / "surf" / "lh.sphere.reg").unlink()
    ds = load("lebel2023", copy, test_stories=test)
    space = ds.space("UTS01")
    assert not space.can_project
    assert space.to_surface(np.ones(space.n_targets)).shape == (2 * N5,)  # its own surface still works
    with pytest.raises(DataNotFoundError, match=r"lh\.sphere\.reg does not exist.*datalad get "
                                                r"derivative/freesurfer_subjdir/UTS01/surf/lh\.sphere\.reg"):
        space.to_fsaverage(np.ones(space.n_targets))


def test_uts09_has_no_freesurfer(tmp_path):
    sim = simulate(n_subjects=1, stories=3, space=20, features=word_embedding_features(4))
    sim.to_lebel(tmp_path)
    pre = tmp_path / "derivative" / "preprocessed_data"
    os.rename(pre / "sim01", pre / "UTS09")
    a = write_lebel_anatomy(tmp_path, "UTS09", voxel_size=4.0, freesurfer=False, masks=("thick",))
    cols = pycortex_columns(code_volume(a.shape), a.masks["thick"])
    for h in pre.glob("UTS09/*.hf5"):
        with h5py.File(h, "r") as f:
            rows = f["data"].shape[0]
        _write_hf5(h, np.tile(cols, (rows, 1)))
    ds = load("lebel2023", tmp_path, test_stories=sim.test_stories)
    space = ds.space("UTS09")
    assert "no fsaverage" in ds.info["surfaces"]["UTS09"]
    assert np.isfinite(space.to_surface(cols)).mean() > 0.9
    with pytest.raises(DataNotFoundError, match=r"UTS09 cannot be projected to fsaverage: UTS09 has no FreeSurfer "
                                                r"subject folder .*ds003020 has FreeSurfer folders for UTS01-UTS08 only"):
        space.to_fsaverage(cols)
    import xarray as xr

    res = xr.Dataset({"score": (("subject", "target"), cols[None].astype(np.float32))},
                     coords={"subject": ["UTS09"], "target": np.arange(cols.size)})
    with pytest.raises(DataNotFoundError, match="UTS09 cannot be projected"):
        project(res, ds)
    rep = lebel2023.check(tmp_path)
    assert any("UTS09 has no FreeSurfer folder" in p for p in rep["problems"])


# ----------------------------------------------------------------------------- datasets check


SURF_REF = Path(__file__).parents[1] / "datasets" / "ds003020-surface-files.txt"
DERIV_REF = Path(__file__).parents[1] / "datasets" / "ds003020-derivative-files.txt"


def test_check_lists_the_surface_files_and_their_datalad_get(tmp_path, capsys):
    files = [ln.strip() for ref in (DERIV_REF, SURF_REF) for ln in ref.read_text().splitlines() if ln.strip()]
    (tmp_path / ".git" / "annex" / "objects").mkdir(parents=True)
    for rel in files:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("../" * (len(Path(rel).parts) - 1) + f".git/annex/objects/Xx/{abs(hash(rel))}/{p.name}", p)
    rep = lebel2023.check(tmp_path)
    assert not rep["surface_ok"] and not rep["surface_missing"]
    nd = set(rep["surface_not_downloaded"])
    assert "derivative/pycortex-db/UTS01/surfaces/wm_lh.gii" in nd
    assert "derivative/pycortex-db/UTS02/surfaces/wm_lh.npz" in nd  # UTS02's older format
    assert "derivative/pycortex-db/UTS01/transforms/UTS01_auto/mask_cortical.nii.gz" in nd
    assert "derivative/pycortex-db/UTS04/transforms/UTS04_auto/mask_cortical.nii.gz" not in nd  # UTS04 has none
    assert "derivative/freesurfer_subjdir/UTS08/surf/rh.sphere.reg" in nd
    assert not any("freesurfer_subjdir/UTS09" in p for p in nd)
    cmd = rep["surface_command"]
    assert cmd.startswith(f"cd {tmp_path} && datalad get ")
    assert "derivative/pycortex-db/UTS03/surfaces " in cmd and "derivative/pycortex-db/UTS03/transforms/UTS03_auto " in cmd
    assert every_listed(cmd, files)
    code = main(["datasets", "check", "lebel2023", str(tmp_path)])
    out = capsys.readouterr().out
    assert code != 0
    assert "surfaces: 0 files missing" in out and "datalad get derivative/pycortex-db/UTS01/surfaces" in out
    assert "UTS09 has no FreeSurfer folder" in out
    # a load on this tree (one subject's responses fetched) keeps a placeholder space and says why
    _fill(tmp_path, files)
    ds = load("lebel2023", tmp_path, subjects=["UTS01"])
    assert not isinstance(ds.space("UTS01"), SubjectSpace)
    assert "git-annex pointer" in ds.info["surfaces"]["UTS01"] and "datalad get" in ds.info["surfaces"]["UTS01"]


def every_listed(cmd: str, files: list[str]) -> bool:
    """Every path the command names exists in the real listing (as a file or a folder of files)."""
    paths = cmd.split("datalad get ", 1)[1].split()
    return all(any(f == p or f.startswith(p + "/") for f in files) for p in paths)


def _fill(root: Path, files: list[str]) -> None:
    """Give UTS01 real responses, TextGrids and respdict (like test_datasets_lebel's _fill_subject)."""
    from test_datasets_lebel import _textgrid

    stories = sorted(Path(f).stem for f in files if "preprocessed_data/UTS01/" in f)
    respdict = {s: 30 for s in stories}
    (root / "derivative" / "respdict.json").unlink()
    (root / "derivative" / "respdict.json").write_text(json.dumps(respdict))
    for s in stories:
        tg = root / "derivative" / "TextGrids" / f"{s}.TextGrid"
        tg.unlink()
        tg.write_text(_textgrid(["a", "b", "c"]))
        _write_hf5(root / "derivative" / "preprocessed_data" / "UTS01" / f"{s}.hf5", np.ones((10, 5)))


# ----------------------------------------------------------------------------- noise ceilings from user repeats


def test_repeats_dir_gives_ceilings(lebel_root, tmp_path):
    from brainalign.encoding.api import dataset_ceiling

    root, _, test = lebel_root
    ds = load("lebel2023", root, test_stories=test)
    assert not ds.has_repeats("UTS01", test[0])
    rng = np.random.default_rng(0)
    rep = tmp_path / "repeats"
    truth = {}
    for subj in SUBJECTS:
        (rep / subj).mkdir(parents=True)
        n, T = ds.stories[test[0]].n_trs, ds.space(subj).n_targets
        signal = rng.standard_normal((n, T))
        truth[subj] = signal
        _write_hf5(rep / subj / f"{test[0]}_rep1.hf5", signal + 0.5 * rng.standard_normal((n, T)))
        with h5py.File(rep / subj / f"{test[0]}_rep2-3.hf5", "w") as f:  # two repeats in one file
            f.create_dataset("data", data=(signal + 0.5 * rng.standard_normal((2, n, T))).astype(np.float32))
    ds = load("lebel2023", root, test_stories=test, repeats_dir=rep)
    assert ds.has_repeats("UTS01", test[0])
    assert ds.repeats("UTS02", test[0]).shape == (3, ds.stories[test[0]].n_trs, ds.space("UTS02").n_targets)
    assert ds.info["ceiling"].startswith("from the repeats in")
    c = dataset_ceiling(ds, "UTS01", test)
    assert c.shape == (ds.space("UTS01").n_targets,) and np.nanmedian(c) > 0.6
    # a repeat with other rows is refused, naming the file
    _write_hf5(rep / "UTS01" / f"{test[0]}_rep4.hf5", np.ones((3, ds.space("UTS01").n_targets)))
    with pytest.raises(ValidationError, match=r"rep4\.hf5: has 3 TRs but"):
        load("lebel2023", root, test_stories=test, repeats_dir=rep)


# ----------------------------------------------------------------------------- subject-native flatmap


def test_subject_flatmap_from_its_own_flat_surface(ds, lebel_root, tmp_path):
    import matplotlib as mpl

    from brainalign.plotting.flat import flatmap, subject_flatmap

    _, anat, _ = lebel_root
    a, space = anat["UTS02"], ds.space("UTS02")
    cols, inside = _blob(a, "UTS02", 1234)
    fig = subject_flatmap(cols, space, vmin=0, vmax=1, cmap="viridis", out=tmp_path / "uts02.png")
    assert (tmp_path / "uts02.png").stat().st_size > 1000
    ax = [x for x in fig.axes if x.get_label() == "subject_flatmap"][0]
    colours = ax.collections[0].get_facecolor()
    flat = space.mesh("flat")
    faces = np.vstack([flat["left"].faces, flat["right"].faces + len(flat["left"].coords)])
    assert len(colours) == len(faces)
    top = np.all(np.abs(colours - np.asarray(mpl.colormaps["viridis"](1.0))) < 0.05, axis=1)
    blob_faces = inside[faces].all(axis=1)
    assert _dice(top, blob_faces) >= 0.8
    # flatmap() on a SubjectSpace draws the same way, without pycortex
    fig2 = flatmap(space.to_surface(cols), space=space, vmin=0, vmax=1, cmap="viridis")
    ax2 = [x for x in fig2.axes if x.get_label() == "subject_flatmap"][0]
    np.testing.assert_allclose(ax2.collections[0].get_facecolor(), colours)
    with pytest.raises(ValidationError, match="voxels and"):
        subject_flatmap(np.ones(7), space)


def test_read_surface_formats(lebel_root, tmp_path):
    from nibabel.freesurfer import write_geometry

    _, anat, _ = lebel_root
    npz = read_surface(anat["UTS02"].pycortex_dir / "surfaces" / "wm_lh.npz")
    gii = read_surface(anat["UTS01"].pycortex_dir / "surfaces" / "wm_lh.gii")
    assert npz.coords.shape == gii.coords.shape == (N5, 3)
    write_geometry(str(tmp_path / "lh.white"), npz.coords.astype(np.float32), npz.faces.astype(np.int32))
    fs = read_surface(tmp_path / "lh.white")
    np.testing.assert_allclose(fs.coords, npz.coords, atol=1e-4)
    np.testing.assert_array_equal(fs.faces, npz.faces)
    bad = tmp_path / "wm_lh.npz"
    np.savez(bad, vertices=npz.coords)
    with pytest.raises(ValidationError, match=r"wm_lh\.npz: a pycortex surface \.npz needs arrays 'pts' and 'polys'"):
        read_surface(bad)
    ptr = tmp_path / "pia_lh.gii"
    ptr.write_text("/annex/objects/MD5E-s1--abc.gii\n")
    with pytest.raises(NotDownloadedError, match="pia_lh.gii"):
        read_surface(ptr)


# ----------------------------------------------------------------------------- atlases on a subject's voxels


def test_label_volume_on_a_subject_space_is_read_in_column_order(ds, lebel_root, tmp_path):
    """A label NIfTI (nibabel's i, j, k) on a non-cubic SubjectSpace (whose mask is z, y, x)
    gives each column the label of its own voxel."""
    import nibabel as nib

    from brainalign.rois import load_atlas

    _, anat, _ = lebel_root
    for subj in SUBJECTS:
        a, space = anat[subj], ds.space(subj)
        assert len(set(a.shape)) == 3  # non-cubic: a wrong transpose cannot pass
        i, j, k = np.meshgrid(*[np.arange(s) for s in a.shape], indexing="ij")
        labels = (1 + i + 100 * (j % 3) + 1000 * (k % 2)).astype(np.int32)
        path = tmp_path / f"{subj}_labels.nii.gz"
        nib.save(nib.Nifti1Image(labels, a.affine), str(path))
        atlas = load_atlas(path, space)
        assert atlas.space == subj and atlas.n_targets == space.n_targets
        np.testing.assert_array_equal(atlas.labels, pycortex_columns(labels.astype(np.float64), a.masks[USES[subj]]))
        bad = tmp_path / f"{subj}_wrong.nii.gz"
        nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0).copy(), a.affine), str(bad))
        with pytest.raises(ValidationError, match=r"wrong\.nii\.gz: label volume has shape .*nibabel's i, j, k"):
            load_atlas(bad, space)


def test_fsaverage_atlases_reach_the_subjects_voxels(ds, lebel_root):
    """Every fsaverage atlas works on a LeBel subject's voxels: each voxel takes the ROI its
    surface points feed, so an ROI carried to the voxels and projected back covers the ROI."""
    from brainalign.rois import load_atlas
    from brainalign.surfaces.atlases import subject_atlas

    _, anat, _ = lebel_root
    fs5 = load_atlas("language")
    for subj in SUBJECTS:
        space = ds.space(subj)
        vox = load_atlas("language", space)
        assert vox.space == subj and vox.n_targets == space.n_targets
        assert vox.names == {k: v for k, v in fs5.names.items() if k in vox.names} and len(vox.names) == 14
        for roi in ("L_pSTS", "R_IFGtri"):
            back = space.to_fsaverage(vox.mask(roi).astype(np.float64))
            assert np.nanmean(back[fs5.mask(roi)]) > 0.85  # the ROI's vertices are fed by its voxels
            assert np.nanmean(back[~fs5.mask(roi)]) < 0.01  # and almost nothing else is
        # the same through an Atlas object and through the Seitzman atlas
        np.testing.assert_array_equal(subject_atlas(fs5, space).labels, vox.labels)
        assert load_atlas("seitzman2018", space).n_targets == space.n_targets
        # a voxel no vertex's line meets belongs to no ROI
        unreached = np.asarray(space.surface_map().sum(axis=0)).ravel() == 0
        assert unreached.any() and (vox.labels[unreached] == 0).all()


def test_aggregate_and_flatmap_of_raw_voxel_results(ds, lebel_root):
    import matplotlib.pyplot as plt

    from brainalign.plotting import flatmap, subject_flatmap
    from brainalign.rois import aggregate

    _, anat, _ = lebel_root
    res, score = _results(ds, anat)
    with pytest.raises(ValidationError, match=r"voxels of volume space 'mixed'.*pass dataset=.*surfaces\.project"):
        aggregate(res, atlas="language")
    curves = aggregate(res, atlas="language", dataset=ds)
    assert set(curves["n_targets"].dims) == {"subject", "roi"}
    one = res["score"].sel(layer=3, subject="UTS01")
    with pytest.raises(ValidationError, match=r"not an fsaverage surface .*ba\.surfaces\.project"):
        flatmap(one.assign_attrs(space="UTS01"))
    with pytest.raises(ValidationError, match=r"match no fsaverage surface; if they are a subject's voxels"):
        flatmap(one.values[: ds.space("UTS01").n_targets])
    with pytest.raises(ValidationError, match=r"cannot tell whose voxels"):
        flatmap(res["score"].sel(layer=3).mean("subject"), dataset=ds)
    fig = flatmap(one, dataset=ds, vmin=0, vmax=1)
    assert fig is not None and subject_flatmap.__module__ == "brainalign.plotting.flat"
    plt.close("all")


def test_projected_pvalues_stay_valid(ds, lebel_root):
    """A vertex's p-value is twice the weighted mean of its voxels' (capped at 1): a p-value
    under any dependence, so p = 0.3 everywhere gives 0.6, and 0.8 gives 1."""
    import xarray as xr

    T = max(ds.space(s).n_targets for s in SUBJECTS)
    p = np.full((2, T), np.nan, np.float32)
    for i, s in enumerate(SUBJECTS):
        p[i, : ds.space(s).n_targets] = 0.3 if i == 0 else 0.8
    res = xr.Dataset({"pvalue": (("subject", "target"), p)}, coords={"subject": list(SUBJECTS), "target": np.arange(T)})
    out = project(res, ds)["pvalue"].values
    np.testing.assert_allclose(out[0][np.isfinite(out[0])], 0.6, rtol=1e-5)
    np.testing.assert_allclose(out[1][np.isfinite(out[1])], 1.0)
