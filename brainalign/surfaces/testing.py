"""Small subject anatomies in ds003020's real formats, for tests and examples (offline).

:func:`write_lebel_anatomy` writes, for one subject, what ds003020 holds under
``derivative/pycortex-db/<SUBJ>`` (GIfTI or the older ``.npz`` surfaces, a
``matrices.xfm`` JSON, ``reference.nii.gz``, ``mask_thick.nii.gz`` and
``mask_cortical.nii.gz``, ``surface-info/curvature.npz``) and under
``derivative/freesurfer_subjdir/<SUBJ>/surf`` (``?h.sphere.reg`` written with
``nibabel.freesurfer.write_geometry``). The subject's cortex is nilearn's fsaverage5
mesh (offline) with its vertices shuffled, scaled and moved, and its ``sphere.reg`` is
fsaverage5's sphere (shuffled the same way) turned by a small angle, so the true
subject vertex <-> fsaverage vertex pairing is known (``perm``). The functional volume
is coarse (3-4 mm voxels) and its masks are the voxels near the cortical ribbon.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .meshes import _HEMIS as _FS_HEMIS
from .meshes import load_mesh, nilearn_package_data

__all__ = ["SyntheticAnatomy", "write_lebel_anatomy", "rotation"]


@dataclass
class SyntheticAnatomy:
    """What :func:`write_lebel_anatomy` wrote, with the ground truth.

    Attributes
    ----------
    pycortex_dir, freesurfer_dir : Path
    perm : dict hemi -> int array
        Subject vertex ``i`` of a hemisphere is fsaverage5 vertex ``perm[hemi][i]``.
    magnet : (4, 4)
        Surface mm -> scanner mm.
    affine : (4, 4)
        The reference image's affine; ``coord = inv(affine) @ magnet``.
    shape : (i, j, k)
    masks : dict name -> bool array (i, j, k), nibabel's order
    fiducial_mm : (n_vertices, 3)
        The subject's vertices (left then right) halfway between white and pial, in scanner mm.
    """

    subject: str
    pycortex_dir: Path
    freesurfer_dir: Path | None
    perm: dict
    magnet: np.ndarray
    affine: np.ndarray
    shape: tuple
    masks: dict
    fiducial_mm: np.ndarray

    @property
    def coord(self) -> np.ndarray:
        return np.linalg.inv(self.affine) @ self.magnet

    def fsaverage_index(self) -> np.ndarray:
        """For each subject vertex (left then right), its fsaverage5 vertex (0..20483)."""
        n = len(self.perm["left"])
        return np.concatenate([self.perm["left"], self.perm["right"] + n])

    def voxel_centres_mm(self) -> np.ndarray:
        """(i, j, k, 3) scanner mm of every voxel centre."""
        ii = np.stack(np.meshgrid(*[np.arange(s) for s in self.shape], indexing="ij"), axis=-1).astype(np.float64)
        return ii @ self.affine[:3, :3].T + self.affine[:3, 3]


def rotation(axis, degrees: float) -> np.ndarray:
    """3 x 3 rotation about ``axis`` by ``degrees`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = np.deg2rad(degrees)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K


def _write_gii(path: Path, coords: np.ndarray, faces: np.ndarray) -> None:
    import nibabel as nib

    img = nib.gifti.GiftiImage(darrays=[
        nib.gifti.GiftiDataArray(np.asarray(coords, np.float32), intent="NIFTI_INTENT_POINTSET"),
        nib.gifti.GiftiDataArray(np.asarray(faces, np.int32), intent="NIFTI_INTENT_TRIANGLE"),
    ])
    nib.save(img, str(path))


def _curv(hemi: str) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(nilearn_package_data() / "fsaverage5" / f"curv_{hemi}.gii.gz")).darrays[0].data,
                      dtype=np.float64)


def write_lebel_anatomy(
    root: "str | os.PathLike",
    subject: str,
    *,
    voxel_size: float = 3.0,
    flip_x: bool = False,
    rotation_deg: float = 0.0,
    scale: float = 1.0,
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0),
    surface_format: str = "gii",
    freesurfer: bool = True,
    sphere_turn_deg: float = 1.0,
    thick_mm: float | None = None,
    cortical_mm: float | None = None,
    masks: tuple[str, ...] = ("thick", "cortical"),
    seed: int = 0,
) -> SyntheticAnatomy:
    """Write one subject's pycortex database (and FreeSurfer ``sphere.reg``) under ``root``.

    Parameters
    ----------
    root : path
        The dataset folder; files go to ``derivative/pycortex-db/<subject>`` and
        ``derivative/freesurfer_subjdir/<subject>/surf``.
    voxel_size : float
        Functional voxel size in mm.
    flip_x : bool
        Store the volume with its first axis running right to left (negative x step).
    rotation_deg : float
        Turn the surfaces about the z axis (degrees) on the way to scanner space (in ``magnet``).
    scale, shift
        The subject's surfaces are fsaverage5's times ``scale`` plus ``shift`` (mm).
    surface_format : {"gii", "npz"}
        GIfTI, or pycortex's older ``.npz`` (``pts``, ``polys``) as UTS02's.
    freesurfer : bool
        Write ``surf/?h.sphere.reg`` (False: as UTS09, no FreeSurfer folder).
    sphere_turn_deg : float
        How far the subject's registered sphere is turned from fsaverage's.
    thick_mm, cortical_mm : float
        Masks: voxels whose centre is within this distance of the cortical ribbon
        (defaults ``0.9`` and ``0.5`` voxel sizes).
    masks : names of the masks to write (``mask_<name>.nii.gz``)
    seed : int
    """
    import nibabel as nib
    from nibabel.freesurfer import write_geometry
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    root = Path(root)
    pdir = root / "derivative" / "pycortex-db" / subject
    for sub in ("surfaces", "surface-info", f"transforms/{subject}_auto"):
        (pdir / sub).mkdir(parents=True, exist_ok=True)
    meshes = {k: load_mesh("fsaverage5", k) for k in ("white", "pial", "inflated", "flat", "sphere")}
    perm: dict[str, np.ndarray] = {}
    inv: dict[str, np.ndarray] = {}
    for hemi in _FS_HEMIS:
        n = len(meshes["white"][hemi].coords)
        perm[hemi] = rng.permutation(n)
        inv[hemi] = np.argsort(perm[hemi])
    R = rotation((0, 0, 1), rotation_deg)
    magnet = np.eye(4)
    magnet[:3, :3] = R
    magnet[:3, 3] = rng.uniform(-5, 5, 3)

    def subject_coords(kind: str, hemi: str) -> np.ndarray:
        c = np.asarray(meshes[kind][hemi].coords, dtype=np.float64)[perm[hemi]]
        return c * scale + np.asarray(shift) if kind in ("white", "pial", "inflated") else c

    names = {"white": "wm", "pial": "pia", "inflated": "inflated", "flat": "flat"}
    for kind, pname in names.items():
        for hemi, h in zip(_FS_HEMIS, ("lh", "rh")):
            coords = subject_coords(kind, hemi)
            faces = inv[hemi][np.asarray(meshes[kind][hemi].faces)]
            if surface_format == "npz":
                np.savez(pdir / "surfaces" / f"{pname}_{h}.npz", pts=coords, polys=faces)
            else:
                _write_gii(pdir / "surfaces" / f"{pname}_{h}.gii", coords, faces)
    np.savez(pdir / "surface-info" / "curvature.npz",
             left=-_curv("left")[perm["left"]], right=-_curv("right")[perm["right"]])

    # scanner-space ribbon points (5 depths) and the functional grid around them
    def to_mm(pts: np.ndarray) -> np.ndarray:
        return pts @ magnet[:3, :3].T + magnet[:3, 3]

    white = np.vstack([subject_coords("white", h) for h in _FS_HEMIS])
    pial = np.vstack([subject_coords("pial", h) for h in _FS_HEMIS])
    ribbon = np.vstack([to_mm(white * (1 - t) + pial * t) for t in np.linspace(0, 1, 5)])
    lo, hi = ribbon.min(0) - 3 * voxel_size, ribbon.max(0) + 3 * voxel_size
    shape = tuple(int(np.ceil((h - l) / voxel_size)) + 1 for l, h in zip(lo, hi))
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = lo
    if flip_x:
        affine[0, 0] = -voxel_size
        affine[0, 3] = lo[0] + (shape[0] - 1) * voxel_size
    tdir = pdir / "transforms" / f"{subject}_auto"
    coord = np.linalg.inv(affine) @ magnet
    (tdir / "matrices.xfm").write_text(json.dumps({"coord": coord.tolist(), "magnet": (affine @ coord).tolist()}, indent=4))
    nib.save(nib.Nifti1Image(rng.standard_normal(shape).astype(np.float32), affine), str(tdir / "reference.nii.gz"))
    ii = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float64)
    centres = ii @ affine[:3, :3].T + affine[:3, 3]
    dist, _ = cKDTree(ribbon).query(centres, distance_upper_bound=voxel_size * 2)
    dist = dist.reshape(shape)
    limits = {"thick": thick_mm if thick_mm is not None else 0.9 * voxel_size,
              "cortical": cortical_mm if cortical_mm is not None else 0.5 * voxel_size}
    out_masks = {}
    for name in masks:
        m = dist <= limits.get(name, limits["thick"])
        out_masks[name] = m
        nib.save(nib.Nifti1Image(m.astype(np.uint8), affine), str(tdir / f"mask_{name}.nii.gz"))

    fsdir = None
    if freesurfer:
        fsdir = root / "derivative" / "freesurfer_subjdir" / subject
        (fsdir / "surf").mkdir(parents=True, exist_ok=True)
        turn = rotation(rng.standard_normal(3), sphere_turn_deg)
        for hemi, h in zip(_FS_HEMIS, ("lh", "rh")):
            sph = np.asarray(meshes["sphere"][hemi].coords, dtype=np.float64)[perm[hemi]] @ turn.T
            faces = inv[hemi][np.asarray(meshes["sphere"][hemi].faces)]
            write_geometry(str(fsdir / "surf" / f"{h}.sphere.reg"), sph.astype(np.float32), faces.astype(np.int32))
    return SyntheticAnatomy(
        subject=subject, pycortex_dir=pdir, freesurfer_dir=fsdir, perm=perm, magnet=magnet, affine=affine,
        shape=shape, masks=out_masks, fiducial_mm=to_mm((white + pial) / 2),
    )
