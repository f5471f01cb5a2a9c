"""Atlases: an integer label per target of a space, and the labels' names.

Sources
-------
``"whole_cortex"``
    Every vertex off the medial wall (label 1).
``"seitzman2018"`` (offline)
    The 300 ROI centres of Seitzman et al. (2018) that nilearn ships in its package
    (no download), cortical ones only, each a sphere of ``radius`` mm on the
    fsaverage midthickness surface, labelled by the ROI's functional network
    (``L_DefaultMode``, ``R_Auditory``...). A vertex inside several spheres takes the
    nearest centre's network. fsaverage's coordinates are MNI305-like, so these are
    approximate projections, good for summaries, not for precise localisation.
``"seitzman2018_rois"``
    The same spheres, one label per ROI (``L_DefaultMode_012``...).
``"language"`` (offline)
    Left-hemisphere language regions and their right homologues as spheres; see
    :data:`LANGUAGE_ROIS` for the coordinates and their sources.
``"destrieux"``
    The Destrieux 2009 sulco-gyral atlas (FreeSurfer ``aparc.a2009s``) for fsaverage5,
    read from nilearn's data home once fetched (``download=True`` fetches it).
a path
    A FreeSurfer ``.annot`` (give the left one, ``lh.*``; the ``rh.*`` beside it is read
    too, or pass ``(left, right)``), FreeSurfer ``.label`` files, a label GIfTI
    (``*.label.gii``), or, for a volume space, a label NIfTI whose voxels are read
    through the space's mask.
a LeBel 2023 subject's voxels
    Any surface atlas above, carried from fsaverage to the voxels of a
    :class:`~brainalign.surfaces.subject.SubjectSpace` (:func:`subject_atlas`).
``"pycortex:<subject>"``
    A pycortex subject's ROIs (``overlays.svg``) in a volume space through the
    transform ``xfm``; needs pycortex and the subject's pycortex database.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import DataNotFoundError, ValidationError, check_data_file
from ..stimulus import FSAVERAGE_SIZES, Space
from .meshes import load_mesh, medial_wall, nilearn_data_dirs, nilearn_package_data, resample, space_of_size, surface_space_name

__all__ = ["Atlas", "load_atlas", "subject_atlas", "whole_targets", "LANGUAGE_ROIS", "OFFLINE_ATLASES"]

log = logging.getLogger(__name__)

#: atlases that need no download
OFFLINE_ATLASES = ("whole_cortex", "seitzman2018", "seitzman2018_rois", "language")

#: Language regions, left hemisphere, approximate MNI centres (mm). The region set is
#: the one used for the fronto-temporal language network in story-listening and
#: sentence-processing work: temporal pole (TP), anterior and posterior superior
#: temporal sulcus/gyrus (aSTS, pSTS), angular gyrus / temporo-parietal junction (AG),
#: inferior frontal gyrus pars orbitalis and pars triangularis (IFGorb, IFGtri), and
#: middle frontal gyrus (MFG): Pallier, Devauchelle & Dehaene (2011) PNAS 108:2522
#: (TP, aSTS, pSTS, TPJ, IFGorb, IFGtri ROIs) and Fedorenko, Hsieh, Nieto-Castañón,
#: Whitfield-Gabrieli & Kanwisher (2010) J Neurophysiol 104:1177 (IFGorb, IFG, MFG,
#: AntTemp, PostTemp, AngG parcels). The numbers below are rounded centres placed in
#: those anatomical regions on the fsaverage surface, not the papers' exact peaks or
#: parcels: use a functional localiser or the published parcels for claims about the
#: language network proper. Right-hemisphere homologues mirror x.
LANGUAGE_ROIS: dict[str, tuple[float, float, float]] = {
    "TP": (-48.0, 14.0, -28.0),
    "aSTS": (-56.0, -10.0, -14.0),
    "pSTS": (-54.0, -42.0, 4.0),
    "AG": (-46.0, -62.0, 28.0),
    "IFGorb": (-46.0, 30.0, -8.0),
    "IFGtri": (-50.0, 24.0, 14.0),
    "MFG": (-42.0, 6.0, 48.0),
}


@dataclass(frozen=True, eq=False)
class Atlas:
    """Integer labels per target of one space.

    Attributes
    ----------
    name : str
    space : str
        The space's name ("fsaverage5", or a volume space's name).
    labels : numpy.ndarray of int, shape (n_targets,)
        0 = unassigned.
    names : dict int -> str
        Name of every label used (0 excluded).
    description : str
        Where the labels came from.
    """

    name: str
    space: str
    labels: np.ndarray
    names: dict[int, str]
    description: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 1:
            raise ValidationError(f"atlas {self.name!r}: labels must be 1-D, got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
                raise ValidationError(f"atlas {self.name!r}: labels must be integers")
        labels = labels.astype(np.int64)
        if (labels < 0).any():
            raise ValidationError(f"atlas {self.name!r}: labels must be >= 0 (0 = unassigned)")
        used = set(np.unique(labels).tolist()) - {0}
        missing = used - set(self.names)
        names = {int(k): str(v) for k, v in self.names.items() if int(k) in used}
        for k in missing:
            names[int(k)] = f"label_{k}"
        names = dict(sorted(names.items()))
        labels.setflags(write=False)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "names", names)

    @property
    def n_targets(self) -> int:
        return int(self.labels.shape[0])

    @property
    def roi_names(self) -> list[str]:
        """Names of the labels, in label order."""
        return list(self.names.values())

    def mask(self, roi: "str | int") -> np.ndarray:
        """Boolean mask of the targets in ``roi`` (a name or a label value)."""
        return self.labels == self.label_of(roi)

    def label_of(self, roi: "str | int") -> int:
        if isinstance(roi, (int, np.integer)):
            if int(roi) not in self.names:
                raise ValidationError(f"atlas {self.name!r} has no label {roi}")
            return int(roi)
        for k, v in self.names.items():
            if v == roi:
                return k
        raise ValidationError(f"atlas {self.name!r} has no ROI named {roi!r}; it has: {', '.join(self.roi_names[:20])}")

    def sizes(self) -> dict[str, int]:
        """Number of targets per ROI."""
        counts = np.bincount(self.labels, minlength=max(self.names, default=0) + 1)
        return {v: int(counts[k]) for k, v in self.names.items()}

    def select(self, rois: Sequence["str | int"], name: str | None = None) -> "Atlas":
        """A new atlas with only ``rois`` (other targets become 0)."""
        keep = [self.label_of(r) for r in rois]
        labels = np.where(np.isin(self.labels, keep), self.labels, 0)
        return Atlas(name or self.name, self.space, labels, {k: self.names[k] for k in keep}, self.description)

    def resample(self, space: "str | Space") -> "Atlas":
        """The same labels on another fsaverage level (see :func:`~brainalign.surfaces.resample`)."""
        dst = surface_space_name(space)
        if dst == self.space:
            return self
        labels = resample(self.labels, self.space, dst)
        return Atlas(self.name, dst, labels, self.names, self.description + f" Resampled {self.space} -> {dst}.")

    def __repr__(self) -> str:
        return f"Atlas({self.name!r}, {self.space}, {len(self.names)} ROIs, {int((self.labels > 0).sum())} targets)"


# --------------------------------------------------------------------------- helpers


def _space_name(space: "str | Space") -> str:
    if isinstance(space, Space):
        return space.name if not space.is_surface else surface_space_name(space)
    return surface_space_name(space)


def _on_space(atlas: Atlas, space: "str | Space") -> Atlas:
    """Carry a surface atlas to the requested surface level."""
    if isinstance(space, Space) and not space.is_surface:
        raise ValidationError(f"atlas {atlas.name!r} is a surface atlas; space {space.name!r} is a volume")
    return atlas.resample(space)


def _spheres(
    centres: np.ndarray,
    hemis: np.ndarray,
    groups: np.ndarray,
    radius: float,
    surface: str = "midthickness",
) -> np.ndarray:
    """Index (into ``centres``) of the nearest centre within ``radius`` mm for every
    fsaverage5 vertex of the matching hemisphere; -1 elsewhere and on the medial wall."""
    from scipy.spatial import cKDTree

    mesh = load_mesh("fsaverage5", surface)
    wall = medial_wall("fsaverage5")
    n = FSAVERAGE_SIZES["fsaverage5"]
    out = np.full(2 * n, -1, dtype=np.int64)
    for h, hemi in enumerate(("left", "right")):
        sel = np.flatnonzero(hemis == ("L" if h == 0 else "R"))
        if len(sel) == 0:
            continue
        tree = cKDTree(centres[sel])
        dist, idx = tree.query(mesh[hemi].coords, distance_upper_bound=radius)
        ok = np.isfinite(dist)
        part = np.full(n, -1, dtype=np.int64)
        part[ok] = sel[idx[ok]]
        out[h * n : (h + 1) * n] = part
    out[wall] = -1
    return out


def _seitzman_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres (300, 3), network names and anatomical regions of Seitzman et al. (2018),
    read from the files nilearn bundles (the parsing of
    ``nilearn.datasets.fetch_coords_seitzman_2018``, without importing ``nilearn.datasets``)."""
    base = nilearn_package_data()
    roi_file = base / "seitzman_2018_ROIs_300inVol_MNI_allInfo.txt"
    anat_file = base / "seitzman_2018_ROIs_anatomicalLabels.txt"
    check_data_file(roi_file, what="nilearn's Seitzman 2018 coordinate file")
    check_data_file(anat_file, what="nilearn's Seitzman 2018 anatomical label file")
    rows = [ln.split() for ln in roi_file.read_text().splitlines()[1:] if ln.strip()]
    xyz = np.array([[float(r[0]), float(r[1]), float(r[2])] for r in rows])
    networks = np.array([r[5] for r in rows])
    lines = anat_file.read_text().splitlines()
    mapping = {int(k): v for k, v in (item.split("=") for item in lines[0].strip().split(","))}
    regions = np.array([mapping[int(float(ln))] for ln in lines[1:] if ln.strip()])
    if not (len(xyz) == len(networks) == len(regions)):
        raise ValidationError(f"{roi_file}: {len(xyz)} ROIs but {anat_file} has {len(regions)} labels")
    return xyz, networks, regions


@functools.lru_cache(maxsize=8)
def _seitzman(radius: float, per_roi: bool) -> tuple[np.ndarray, dict[int, str]]:
    xyz, networks, regions = _seitzman_table()
    cortical = np.isin(regions, ["cortexL", "cortexR", "cortexMid"])
    hemis = np.where(xyz[:, 0] < 0, "L", "R")
    keep = cortical & (networks != "unassigned")
    centres, hemis, networks = xyz[keep], hemis[keep], networks[keep]
    idx = _spheres(centres, hemis, networks, radius)
    if per_roi:
        names_list = [f"{h}_{_camel(net)}_{i:03d}" for i, (h, net) in enumerate(zip(hemis, networks))]
    else:
        names_list = [f"{h}_{_camel(net)}" for h, net in zip(hemis, networks)]
    uniq = sorted(set(names_list), key=lambda s: (s[0], s))
    code = {nm: i + 1 for i, nm in enumerate(uniq)}
    lookup = np.array([code[nm] for nm in names_list], dtype=np.int64)
    labels = np.where(idx >= 0, lookup[np.clip(idx, 0, None)], 0)
    return labels, {v: k for k, v in code.items()}


def _camel(s: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in str(s).replace("-", " ").replace("_", " ").split())


def _language(radius: float) -> tuple[np.ndarray, dict[int, str]]:
    names, centres, hemis = [], [], []
    for hemi, sign in (("L", 1.0), ("R", -1.0)):
        for roi, (x, y, z) in LANGUAGE_ROIS.items():
            names.append(f"{hemi}_{roi}")
            centres.append((sign * x, y, z))
            hemis.append(hemi)
    idx = _spheres(np.asarray(centres), np.asarray(hemis), np.asarray(names), radius)
    labels = idx + 1  # -1 -> 0
    return labels, {i + 1: nm for i, nm in enumerate(names)}


def _destrieux_files(data_dir: "str | os.PathLike | None") -> tuple[Path, Path] | None:
    for d in nilearn_data_dirs(data_dir):
        base = d / "destrieux_surface"
        lh, rh = base / "lh.aparc.a2009s.annot", base / "rh.aparc.a2009s.annot"
        if lh.exists() and rh.exists():
            return lh, rh
    return None


def _destrieux(data_dir, download: bool) -> Atlas:
    files = _destrieux_files(data_dir)
    if files is None and download:
        from nilearn.datasets import fetch_atlas_surf_destrieux

        log.info("fetching the Destrieux surface atlas with nilearn")
        try:
            fetch_atlas_surf_destrieux(data_dir=data_dir, verbose=0)
        except Exception as exc:  # network errors come in many types
            raise DataNotFoundError(f"could not fetch the Destrieux atlas with nilearn: {exc}") from exc
        files = _destrieux_files(data_dir)
    if files is None:
        raise DataNotFoundError(
            "the Destrieux surface atlas is not in nilearn's data home "
            f"({', '.join(str(d) for d in nilearn_data_dirs(data_dir))}). Fetch it once while online with "
            "brainalign.rois.load_atlas('destrieux', download=True) or "
            "python -c \"from nilearn.datasets import fetch_atlas_surf_destrieux; fetch_atlas_surf_destrieux()\"; "
            f"offline, use one of {', '.join(OFFLINE_ATLASES)}."
        )
    atlas = _read_annot_pair(files[0], files[1], name="destrieux", skip=("Medial_wall", "Unknown"))
    return Atlas(
        "destrieux",
        atlas.space,
        atlas.labels,
        atlas.names,
        "Destrieux et al. (2010) sulco-gyral atlas (FreeSurfer aparc.a2009s), per hemisphere.",
    )


def _decode(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _read_annot(path: Path) -> tuple[np.ndarray, list[str]]:
    import nibabel.freesurfer as fsio

    check_data_file(path, what="annotation file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # junk files overflow nibabel's reader
            labels, _ctab, names = fsio.read_annot(str(path))
    except Exception as exc:
        raise ValidationError(f"{path}: not a readable FreeSurfer .annot file ({exc})") from exc
    return np.asarray(labels, dtype=np.int64), [_decode(n) for n in names]


def _read_label_gifti(path: Path) -> tuple[np.ndarray, dict[int, str]]:
    import nibabel as nib

    check_data_file(path, what="label GIfTI")
    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise ValidationError(f"{path}: not a readable GIfTI file ({exc})") from exc
    if not getattr(img, "darrays", None):
        raise ValidationError(f"{path}: GIfTI file has no data array")
    data = np.asarray(img.darrays[0].data)
    if data.ndim != 1:
        raise ValidationError(f"{path}: label GIfTI data must be 1-D, got shape {data.shape}")
    table = img.labeltable.get_labels_as_dict() if img.labeltable is not None else {}
    return data.astype(np.int64), {int(k): str(v) for k, v in table.items()}


def _combine_hemis(
    left: tuple[np.ndarray, Mapping[int, str]],
    right: tuple[np.ndarray, Mapping[int, str]],
    skip: Sequence[str],
) -> tuple[np.ndarray, dict[int, str]]:
    """Per-hemisphere labels -> one labelling with ``L_``/``R_`` names, codes 1..n."""
    out_labels, names, code = [], {}, 0
    for prefix, (lab, table) in (("L", left), ("R", right)):
        new = np.zeros(len(lab), dtype=np.int64)
        for k in np.unique(lab):
            nm = table.get(int(k))
            if k < 0 or nm is None or nm in skip or nm.lower() in ("unknown", "???", "medial_wall"):
                continue
            code += 1
            new[lab == k] = code
            names[code] = f"{prefix}_{nm}"
        out_labels.append(new)
    return np.concatenate(out_labels), names


def _pair_space(left: Path, right: Path, counts: tuple[int, int], space: "str | Space") -> str:
    """The fsaverage level of a (left, right) pair of atlas files, from each file's vertex count.

    Each file must have the vertices of one hemisphere of an fsaverage level (the atlas
    is resampled to ``space`` afterwards), both the same level.
    """
    for path, n in zip((left, right), counts):
        if n not in FSAVERAGE_SIZES.values():
            want = _space_name(space)
            raise ValidationError(
                f"{path}: has {n} vertices, but {want} has {FSAVERAGE_SIZES[want]} per hemisphere "
                f"(a hemisphere of another fsaverage level, resampled to {want}, is also accepted: "
                + ", ".join(str(v) for v in sorted(set(FSAVERAGE_SIZES.values())))
                + " vertices)"
            )
    if counts[0] != counts[1]:
        raise ValidationError(f"{left} has {counts[0]} vertices but {right} has {counts[1]}: not one surface")
    return space_of_size(2 * counts[0])


def _read_annot_pair(
    lh: Path, rh: Path, name: str, skip: Sequence[str] = (), space: "str | Space" = "fsaverage5"
) -> Atlas:
    ll, ln = _read_annot(lh)
    rl, rn = _read_annot(rh)
    level = _pair_space(lh, rh, (len(ll), len(rl)), space)
    labels, names = _combine_hemis((ll, dict(enumerate(ln))), (rl, dict(enumerate(rn))), skip)
    return Atlas(name, level, labels, names, f"FreeSurfer annotation {lh.name} + {rh.name}.")


def _other_hemi(path: Path) -> Path | None:
    nm = path.name
    for a, b in (("lh.", "rh."), ("hemi-L", "hemi-R"), ("_left", "_right"), (".L.", ".R."), ("_L_", "_R_")):
        if a in nm:
            return path.with_name(nm.replace(a, b, 1))
    return None


def _from_paths(paths: Sequence[Path], space: "str | Space", names: Mapping[int, str] | None) -> Atlas:
    for p in paths:
        check_data_file(p, what="atlas file")
    suffixes = "".join(paths[0].suffixes[-2:]).lower()
    nm = paths[0].name.split(".")[0] if not paths[0].name.startswith(("lh.", "rh.")) else paths[0].name.split(".")[1]
    if isinstance(space, Space) and not space.is_surface:
        if len(paths) != 1:
            raise ValidationError("a volume atlas is one label image")
        return _from_volume(paths[0], space, names)
    if paths[0].suffix == ".label" and not suffixes.endswith(".label.gii"):
        return _from_label_files(paths, space)
    if len(paths) == 1:
        other = _other_hemi(paths[0])
        if other is None or not other.exists():
            raise ValidationError(
                f"{paths[0]}: a surface atlas needs both hemispheres; name the left file lh.* / *hemi-L* "
                "with the right one beside it, or pass (left, right)"
            )
        paths = [paths[0], other]
    if len(paths) != 2:
        raise ValidationError(f"a surface atlas is two files (left, right), got {len(paths)}")
    if paths[0].suffix == ".annot":
        atlas = _read_annot_pair(paths[0], paths[1], name=nm, space=space)
    elif suffixes.endswith(".gii") or suffixes.endswith(".gii.gz"):
        left, right = _read_label_gifti(paths[0]), _read_label_gifti(paths[1])
        level = _pair_space(paths[0], paths[1], (len(left[0]), len(right[0])), space)
        if names:
            left, right = (left[0], {**left[1], **names}), (right[0], {**right[1], **names})
        labels, nms = _combine_hemis(left, right, skip=())
        atlas = Atlas(nm, level, labels, nms, f"label GIfTI {paths[0].name} + {paths[1].name}.")
    else:
        raise ValidationError(f"{paths[0]}: unknown atlas format (want .annot, .label, .label.gii or a NIfTI label volume)")
    return _on_space(atlas, space)


def _from_label_files(paths: Sequence[Path], space: "str | Space") -> Atlas:
    import nibabel.freesurfer as fsio

    name = surface_space_name(space)
    n = FSAVERAGE_SIZES[name]
    labels = np.zeros(2 * n, dtype=np.int64)
    names = {}
    for i, p in enumerate(paths, start=1):
        check_data_file(p, what="label file")
        if p.name.startswith("lh."):
            off = 0
        elif p.name.startswith("rh."):
            off = n
        else:
            raise ValidationError(f"{p}: FreeSurfer .label files must start with lh. or rh. to say their hemisphere")
        try:
            verts = np.asarray(fsio.read_label(str(p)), dtype=np.int64)
        except Exception as exc:
            raise ValidationError(f"{p}: not a readable FreeSurfer .label file ({exc})") from exc
        if verts.size and (verts.max() >= n or verts.min() < 0):
            raise ValidationError(f"{p}: vertex index {verts.max()} out of range for {name} ({n} per hemisphere)")
        labels[off + verts] = i
        names[i] = ("L_" if off == 0 else "R_") + p.name[3:].removesuffix(".label")
    return Atlas("labels", name, labels, names, "FreeSurfer .label files: " + ", ".join(p.name for p in paths))


def _from_volume(path: Path, space: Space, names: Mapping[int, str] | None) -> Atlas:
    import nibabel as nib

    check_data_file(path, what="label volume")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:
        raise ValidationError(f"{path}: not a readable label volume ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    # nibabel reads (i, j, k); a SubjectSpace keeps its mask in pycortex's (z, y, x) order,
    # its targets being the mask's voxels in that order's C order (see surfaces.subject)
    zyx = _is_subject(space)
    mask_ijk = space.mask.T if zyx else space.mask
    if data.shape != mask_ijk.shape:
        raise ValidationError(f"{path}: label volume has shape {data.shape}, space {space.name!r} has {mask_ijk.shape} "
                              "(nibabel's i, j, k order)")
    if space.affine is not None and not np.allclose(img.affine, space.affine, atol=1e-3):
        raise ValidationError(f"{path}: affine differs from space {space.name!r}'s; resample the labels to the subject's volume first")
    if np.any(data != np.round(data)):
        raise ValidationError(f"{path}: label volume has non-integer values")
    labels = (data.T[space.mask] if zyx else data[space.mask]).astype(np.int64)
    table = dict(names or {})
    return Atlas(path.name.split(".")[0], space.name, labels, table, f"label volume {path.name} through the {space.name} mask.")


def _pycortex(subject: str, space: Space, xfm: str | None, rois: Sequence[str] | None) -> Atlas:
    try:
        import cortex  # noqa: F401
    except ImportError as exc:
        raise DataNotFoundError(
            "pycortex ROIs need pycortex: pip install pycortex (or pip install 'brainalign[pycortex]'), "
            "then point its filestore at the subject's database (for LeBel 2023: derivative/pycortex-db)."
        ) from exc
    if not isinstance(space, Space) or space.is_surface:
        raise ValidationError("pycortex ROIs are for a volume space: pass the subject's Space.volume(...)")
    if not xfm:
        raise ValidationError("pycortex ROIs need the transform name, e.g. xfm='UTS01_auto'")
    masks = cortex.utils.get_roi_masks(subject, xfm, roi_list=list(rois) if rois else None, gm_sampler="cortical", split_lr=True)
    labels = np.zeros(space.n_targets, dtype=np.int64)
    names = {}
    for i, (nm, m) in enumerate(sorted(masks.items()), start=1):
        m = np.asarray(m)
        if m.shape != space.mask.shape:
            raise ValidationError(f"pycortex ROI {nm!r} has shape {m.shape}; space mask has {space.mask.shape}")
        labels[(m[space.mask] > 0) & (labels == 0)] = i
        names[i] = nm
    return Atlas(f"pycortex:{subject}", space.name, labels, names, f"pycortex ROIs of {subject} through {xfm}.")


# --------------------------------------------------------------------------- subjects' voxels


def _is_subject(space) -> bool:
    from .subject import SubjectSpace

    return isinstance(space, SubjectSpace)


def _volume_source(name) -> bool:
    """True for atlas sources read in a volume space itself, False for surface atlases."""
    if isinstance(name, Atlas):
        return name.space not in FSAVERAGE_SIZES
    if isinstance(name, (list, tuple)):
        return False  # a (left, right) pair of surface files
    low = str(name).lower()
    return low in _WHOLE or low.startswith("pycortex:") or low.endswith((".nii", ".nii.gz"))


def subject_atlas(atlas: Atlas, space: Space, n_samples: int = 16) -> Atlas:
    """An fsaverage atlas carried to a subject's voxels (a LeBel 2023 :class:`SubjectSpace`).

    Each voxel takes the label that carries most of its weight in the subject's
    voxels -> fsaverage map (:meth:`~brainalign.surfaces.subject.SubjectSpace.labels_from_fsaverage`:
    the line sampling between white and pial surfaces, then ``sphere.reg``), so a voxel
    belongs to the ROI whose fsaverage vertices it feeds. Label codes and names are the
    atlas's; an ROI that reaches none of the subject's voxels is left out of ``names``.

    Raises
    ------
    DataNotFoundError
        The subject has no ``sphere.reg`` (UTS09), naming what is missing.
    """
    from .subject import SubjectSpace

    if not isinstance(space, SubjectSpace):
        raise ValidationError(f"subject_atlas needs a subject's SubjectSpace (dataset.space(subject)), got {space!r}")
    if atlas.space not in FSAVERAGE_SIZES:
        raise ValidationError(f"atlas {atlas.name!r} is on {atlas.space!r}, not an fsaverage surface")
    try:
        labels = space.labels_from_fsaverage(atlas.labels, atlas.space, n_samples=n_samples)
    except DataNotFoundError as exc:
        raise DataNotFoundError(
            f"atlas {atlas.name!r} is an {atlas.space} atlas; carrying it to subject {space.subject}'s voxels needs "
            f"the subject's registration to fsaverage: {exc}"
        ) from None
    return Atlas(atlas.name, space.name, labels, atlas.names,
                 atlas.description + f" Carried to {space.subject}'s {space.n_targets} voxels (each voxel takes the "
                 f"label of most of its weight in the voxels -> {atlas.space} map).",
                 meta={**atlas.meta, "from_space": atlas.space})


# --------------------------------------------------------------------------- public

_WHOLE = ("whole_cortex", "cortex", "whole-cortex")


def whole_targets(n_targets: int, space: str) -> Atlas:
    """One ROI, ``whole_cortex``, holding all ``n_targets`` targets of ``space`` (for volume
    spaces, whose targets are cortical voxels, and surfaces without a known mesh)."""
    if n_targets <= 0:
        raise ValidationError(f"space {space!r} has no targets")
    return Atlas("whole_cortex", space, np.ones(int(n_targets), dtype=np.int64), {1: "whole_cortex"},
                 f"All {n_targets} targets of {space} (no medial wall known there).")



def load_atlas(
    name: "str | os.PathLike | Sequence[str | os.PathLike] | Atlas",
    space: "str | Space" = "fsaverage5",
    *,
    radius: float | None = None,
    names: Mapping[int, str] | None = None,
    download: bool = False,
    data_dir: "str | os.PathLike | None" = None,
    xfm: str | None = None,
    rois: Sequence[str] | None = None,
) -> Atlas:
    """Load an atlas as labels on ``space``'s targets.

    Parameters
    ----------
    name : str, path, (left, right) paths, or Atlas
        "whole_cortex", "seitzman2018", "seitzman2018_rois", "language",
        "destrieux", "pycortex:<subject>", or files (see the module docstring).
    space : str or Space
        fsaverage level ("fsaverage5"; finer levels need their mesh fetched once), or a
        volume :class:`~brainalign.stimulus.Space` for label volumes and pycortex. For a
        LeBel 2023 subject (a :class:`~brainalign.surfaces.subject.SubjectSpace` that can
        project to fsaverage), every surface atlas (names, ``.annot``, label GIfTI, an
        fsaverage :class:`Atlas`) is loaded on fsaverage5 and carried to the subject's
        voxels by :func:`subject_atlas`; label NIfTIs are read in the subject's volume.
    radius : float, optional
        Sphere radius in mm for the coordinate atlases (default 10 for Seitzman,
        12 for language).
    names : dict, optional
        Label value -> name for label volumes or GIfTIs without a label table.
    download : bool
        Let nilearn fetch the Destrieux atlas when it is not cached.
    data_dir : path, optional
        nilearn's data home (default: its own).
    xfm, rois : optional
        pycortex transform name and ROI subset.

    Returns
    -------
    Atlas
    """
    if _is_subject(space) and not _volume_source(name):
        src = name if isinstance(name, Atlas) else load_atlas(
            name, "fsaverage5", radius=radius, names=names, download=download, data_dir=data_dir)
        return subject_atlas(src, space)
    if isinstance(name, Atlas):
        return name if isinstance(space, Space) and not space.is_surface else _on_space(name, space)
    if isinstance(name, (list, tuple)):
        return _from_paths([Path(p).expanduser() for p in name], space, names)
    if isinstance(name, os.PathLike) or (isinstance(name, str) and (os.sep in name or Path(name).suffix)):
        return _from_paths([Path(name).expanduser()], space, names)
    if not isinstance(name, str):
        raise ValidationError(f"atlas must be a name, a path or an Atlas, got {type(name).__name__}")
    key = name.lower()
    if key.startswith("pycortex:"):
        return _pycortex(name.split(":", 1)[1], space, xfm, rois)  # type: ignore[arg-type]
    if key in _WHOLE and isinstance(space, Space) and space.name not in FSAVERAGE_SIZES and space.name != "fsaverage":
        # a volume (cortical voxels) or a mesh-free surface: every target, no medial wall known
        return whole_targets(space.n_targets, space.name)
    if isinstance(space, Space) and not space.is_surface:
        raise ValidationError(
            f"atlas {name!r} is a surface atlas; for volume space {space.name!r} give a label volume path "
            "or 'pycortex:<subject>'"
        )
    target = surface_space_name(space)
    if key in _WHOLE:
        labels = (~medial_wall(target)).astype(np.int64)
        return Atlas("whole_cortex", target, labels, {1: "whole_cortex"}, "All vertices off the medial wall.")
    if key in ("seitzman2018", "seitzman", "seitzman2018_rois"):
        r = 10.0 if radius is None else float(radius)
        if r <= 0:
            raise ValidationError(f"radius must be positive, got {radius}")
        per_roi = key.endswith("_rois")
        labels, nms = _seitzman(r, per_roi)
        atlas = Atlas(
            "seitzman2018_rois" if per_roi else "seitzman2018",
            "fsaverage5",
            labels,
            nms,
            f"Seitzman et al. (2018) cortical ROI centres (bundled with nilearn) as {r:g} mm spheres on the "
            "fsaverage5 midthickness surface, labelled by functional network"
            + (" and ROI." if per_roi else "."),
        )
        return _on_space(atlas, target)
    if key in ("language", "language_network", "lang"):
        r = 12.0 if radius is None else float(radius)
        if r <= 0:
            raise ValidationError(f"radius must be positive, got {radius}")
        labels, nms = _language(r)
        atlas = Atlas(
            "language",
            "fsaverage5",
            labels,
            nms,
            f"Language regions (TP, aSTS, pSTS, AG, IFGorb, IFGtri, MFG) and right homologues as {r:g} mm spheres "
            "on the fsaverage5 midthickness surface around approximate MNI centres (Pallier et al. 2011; "
            "Fedorenko et al. 2010).",
        )
        return _on_space(atlas, target)
    if key in ("destrieux", "destrieux2009", "aparc.a2009s"):
        return _on_space(_destrieux(data_dir, download), target)
    raise ValidationError(
        f"unknown atlas {name!r}; known: whole_cortex, seitzman2018, seitzman2018_rois, language, destrieux, "
        "pycortex:<subject>, or a path to .annot/.label/.label.gii/label NIfTI files"
    )
