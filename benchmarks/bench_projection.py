"""Time one LeBel-sized subject map (~90,000 voxels) projected to fsaverage5.

A synthetic subject at real size, written in ds003020's formats: its surfaces are
nilearn's fsaverage5 meshes subdivided twice (163,842 vertices per hemisphere, the size
of a FreeSurfer subject's), as GIfTI ``wm``/``pia`` and FreeSurfer ``?h.sphere.reg``
(nibabel); a functional volume with ``--voxel`` mm voxels and a ``mask_thick`` of the
voxels near the ribbon (about 90,000 at 2.0 mm), a ``matrices.xfm`` and
``reference.nii.gz``.

Timed:
* the one-time map build (volume -> subject surface line map, sphere.reg -> fsaverage5
  map, their product), cold cache, from the files;
* reading the cached map in a fresh space (memory cache cleared);
* ``SubjectSpace.to_fsaverage`` of one map, and of a (13, n_voxels) stack (13 layers);
* the floor: the bare scipy sparse mat-vec with the cached matrix;
* baseline: nilearn's ``vol_to_surf`` (kind="line", 16 samples, the same white and pial
  meshes in scanner mm), which samples the volume anew at every call, for one map on
  the subject's surface (not yet on fsaverage; "linear": nilearn 0.14 offers no plain nearest).

    .venv/bin/python benchmarks/bench_projection.py [--voxel 2.0] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _median(fn, repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def _subdivide(coords: np.ndarray, faces: np.ndarray, sphere: np.ndarray):
    """Split every triangle in 4 (midpoints); sphere midpoints pushed back to the sphere."""
    e = np.sort(np.vstack([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    uniq, inv = np.unique(e, axis=0, return_inverse=True)
    n = len(coords)
    mid = n + inv.reshape(3, -1).T  # (F, 3): midpoints of edges 01, 12, 20
    c = np.vstack([coords, coords[uniq].mean(axis=1)])
    s = np.vstack([sphere, sphere[uniq].mean(axis=1)])
    s = s * (np.linalg.norm(sphere, axis=1).mean() / np.linalg.norm(s, axis=1))[:, None]
    a, b, d = faces.T
    m01, m12, m20 = mid.T
    f = np.vstack([np.c_[a, m01, m20], np.c_[m01, b, m12], np.c_[m20, m12, d], np.c_[m01, m12, m20]])
    return c, f, s


def build_subject(root: Path, voxel: float):
    import nibabel as nib
    from nibabel.freesurfer import write_geometry
    from scipy.spatial import cKDTree

    from brainalign.surfaces import load_mesh
    from brainalign.surfaces.testing import _write_gii

    pdir = root / "pycortex-db" / "BENCH"
    fsdir = root / "freesurfer" / "BENCH"
    for d in (pdir / "surfaces", pdir / "transforms" / "BENCH_auto", fsdir / "surf"):
        d.mkdir(parents=True, exist_ok=True)
    white_all, pial_all = [], []
    for hemi, h in (("left", "lh"), ("right", "rh")):
        w = np.asarray(load_mesh("fsaverage5", "white")[hemi].coords, dtype=np.float64)
        p = np.asarray(load_mesh("fsaverage5", "pial")[hemi].coords, dtype=np.float64)
        s = np.asarray(load_mesh("fsaverage5", "sphere")[hemi].coords, dtype=np.float64)
        f = np.asarray(load_mesh("fsaverage5", "white")[hemi].faces)
        for _ in range(2):
            wp, f2, s = _subdivide(np.hstack([w, p]), f, s)
            w, p, f = wp[:, :3], wp[:, 3:], f2
        _write_gii(pdir / "surfaces" / f"wm_{h}.gii", w, f)
        _write_gii(pdir / "surfaces" / f"pia_{h}.gii", p, f)
        write_geometry(str(fsdir / "surf" / f"{h}.sphere.reg"), s.astype(np.float32), f.astype(np.int32))
        white_all.append(w)
        pial_all.append(p)
    white, pial = np.vstack(white_all), np.vstack(pial_all)
    ribbon = np.vstack([white * (1 - t) + pial * t for t in np.linspace(0, 1, 4)])
    lo, hi = ribbon.min(0) - 3 * voxel, ribbon.max(0) + 3 * voxel
    shape = tuple(int(np.ceil((b - a) / voxel)) + 1 for a, b in zip(lo, hi))
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = lo
    ii = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3) * voxel + lo
    dist, _ = cKDTree(ribbon).query(ii, distance_upper_bound=2 * voxel)
    mask = (dist <= 0.75 * voxel).reshape(shape)
    t = pdir / "transforms" / "BENCH_auto"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(t / "mask_thick.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), affine), str(t / "reference.nii.gz"))
    coord = np.linalg.inv(affine)  # surfaces already in scanner mm: magnet = identity
    (t / "matrices.xfm").write_text(json.dumps({"coord": coord.tolist(), "magnet": np.eye(4).tolist()}))
    return pdir, fsdir, int(mask.sum()), len(white) // 2, (white, pial, mask, affine)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--voxel", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-nilearn", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp())
    os.environ["BRAINALIGN_CACHE"] = str(tmp / "cache")
    from brainalign.surfaces import subject as subject_mod
    from brainalign.surfaces.subject import SubjectSpace

    t = time.perf_counter()
    pdir, fsdir, n_vox, n_vert, raw = build_subject(tmp, args.voxel)
    setup = time.perf_counter() - t
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n_vox).astype(np.float32)
    X = rng.standard_normal((13, n_vox)).astype(np.float32)
    rows = []

    space = SubjectSpace.from_pycortex("BENCH", pdir, n_targets=n_vox, freesurfer_dir=fsdir)
    t = time.perf_counter()
    M = space.fsaverage_map("fsaverage5")
    build = time.perf_counter() - t
    rows.append(("one-time map build (line map + sphere map + product, cold cache)", build))

    def cached():
        subject_mod.clear_memory_cache()
        sp = SubjectSpace.from_pycortex("BENCH", pdir, n_targets=n_vox, freesurfer_dir=fsdir)
        sp.fsaverage_map("fsaverage5")

    rows.append(("read the cached map in a fresh space (file hashes + load_npz)", _median(cached, args.repeats)))
    space = SubjectSpace.from_pycortex("BENCH", pdir, n_targets=n_vox, freesurfer_dir=fsdir)
    space.fsaverage_map("fsaverage5")
    rows.append(("SubjectSpace.to_fsaverage, one map", _median(lambda: space.to_fsaverage(x), args.repeats)))
    rows.append(("SubjectSpace.to_fsaverage, 13 maps (layers)", _median(lambda: space.to_fsaverage(X), args.repeats)))
    x64 = x.astype(np.float64)
    rows.append(("floor: scipy sparse mat-vec M @ x (cached matrix)", _median(lambda: M @ x64, args.repeats)))
    if not args.no_nilearn:
        import nibabel as nib
        from nilearn.surface import vol_to_surf

        white, pial, mask, affine = raw
        img = nib.Nifti1Image(np.nan_to_num(space.unmask(x)).astype(np.float32), affine)
        mask_img = nib.Nifti1Image(mask.astype(np.uint8), affine)
        faces = [subject_mod._mesh(space.surfaces["wm"][i]).faces for i in range(2)]

        def nl():
            for h in range(2):
                sl = slice(h * n_vert, (h + 1) * n_vert)
                vol_to_surf(img, (pial[sl], faces[h]), inner_mesh=(white[sl], faces[h]), kind="line",
                            n_samples=16, interpolation="linear", mask_img=mask_img)

        rows.append(("baseline: nilearn vol_to_surf (line, 16 samples, linear), subject surface only, per call",
                     _median(nl, max(1, args.repeats // 2))))
    print(f"subject: {n_vox} voxels ({args.voxel} mm), {n_vert} vertices per hemisphere, "
          f"fsaverage5 map {M.shape} with {M.nnz} nonzeros; fixture written in {setup:.1f} s; "
          f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs")
    print()
    print("| what | time (s) |")
    print("| --- | --- |")
    for name, sec in rows:
        print(f"| {name} | {sec:.4f} |")


if __name__ == "__main__":
    main()
