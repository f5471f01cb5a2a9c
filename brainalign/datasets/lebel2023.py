"""LeBel et al. 2023, OpenNeuro ds003020 ("lebel2023").

Layout read (under ``root``, the dataset folder)::

    derivative/respdict.json                         {story: untrimmed TR count}
    derivative/TextGrids/<story>.TextGrid            phone tier + word tier
    derivative/preprocessed_data/<SUBJ>/<story>.hf5  dataset "data", (TRs x voxels)

TR times follow the dataset's reference pipeline (see
:func:`brainalign.datasets._corpus.lebel_tr_times`): ``n = respdict[story] - 5`` TR
midpoints ``t_k = 2 k - 10 + 1`` s from sound onset, rows ``[10 : n - 5]`` kept. Each
``.hf5`` must have exactly that many rows; a mismatch fails loudly, naming the file.
Responses are read one story at a time, when asked for; loading reads only the
``.hf5`` headers (shapes), never the arrays.

Subject volumes and surfaces (read when present, with nibabel; pycortex is not needed)::

    derivative/pycortex-db/<SUBJ>/transforms/<SUBJ>_auto/{matrices.xfm, reference.nii.gz,
                                                          mask_thick.nii.gz[, mask_cortical.nii.gz]}
    derivative/pycortex-db/<SUBJ>/surfaces/{wm,pia,inflated,flat}_{lh,rh}.gii  (.npz for UTS02)
    derivative/pycortex-db/<SUBJ>/surface-info/curvature.npz
    derivative/freesurfer_subjdir/<SUBJ>/surf/{lh,rh}.sphere.reg               (UTS01-UTS08)

With them, ``dataset.space(subj)`` is a :class:`~brainalign.surfaces.subject.SubjectSpace`:
the reference volume, the mask whose voxel count equals the ``.hf5`` columns (checked; the
columns are that mask's voxels in pycortex's order, see :mod:`brainalign.surfaces.subject`),
the map to the subject's surface and, through ``sphere.reg``, to fsaverage
(:func:`brainalign.surfaces.project`). UTS09 has no FreeSurfer folder: its maps on its own
surface and flatmap work, fsaverage projection raises saying so. Without the pycortex
files the space is a placeholder volume with the right voxel count (and
``info["surfaces"][subj]`` says what is missing).

Noise ceilings: the derivative has no preprocessed single repeats of the test story (its
``.hf5`` is already their average; the repeats exist only as raw BOLD runs), so by
default there is no ceiling. ``repeats_dir=`` takes a folder of repeats you preprocessed
yourself (``<repeats_dir>/<SUBJ>/<story>*.hf5``, same rows and voxel columns as the
averaged file); ceilings are then computed from them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_path, atomic_write_json
from ..errors import DataNotFoundError, NotDownloadedError, ValidationError, check_data_file, is_annex_pointer
from ..stimulus import Responses, Space, Story
from ._corpus import lebel_tr_times
from .base import Dataset

log = logging.getLogger(__name__)

__all__ = ["load", "write", "check", "TEST_STORY", "TR", "get_command", "surface_get_command", "surface_files",
           "NO_REPEATS", "FREESURFER_SUBJECTS"]

TEST_STORY = "wheretheressmoke"
TR = 2.0
DERIV = "derivative"
PYCORTEX = f"{DERIV}/pycortex-db"
FREESURFER = f"{DERIV}/freesurfer_subjdir"
#: subjects with a FreeSurfer folder (and so a sphere.reg) in ds003020
FREESURFER_SUBJECTS = tuple(f"UTS0{i}" for i in range(1, 9))
#: what results and reports should say about noise ceilings on this dataset
NO_REPEATS = (
    "ds003020's derivative has no preprocessed single repeats of the test story (its .hf5 is the average of the "
    "repeats; the single repeats exist only as raw, unpreprocessed BOLD runs), so no noise ceiling is computed. "
    "Preprocess the repeats yourself and pass load(..., repeats_dir=...) to get one."
)


def get_command(root: str | os.PathLike, subjects: Sequence[str] | None = None) -> str:
    """The ``datalad get`` command that fetches what :func:`load` needs."""
    subs = " ".join(f"{DERIV}/preprocessed_data/{s}" for s in (subjects or ["UTS01"]))
    return f"cd {root} && datalad get {subs} {DERIV}/TextGrids {DERIV}/respdict.json"


_INSTALL = "datalad install https://github.com/OpenNeuroDatasets/ds003020.git"


def surface_files(root: str | os.PathLike, subject: str, xfm: str | None = None) -> dict[str, list[str]]:
    """The pycortex and FreeSurfer files a subject's surface mapping reads, relative to ``root``.

    Returns ``{"pycortex": [...], "freesurfer": [...]}``. Surfaces are ``.npz`` where the
    database holds ``.npz`` (UTS02), else ``.gii``; ``mask_cortical`` is listed when present
    (only some subjects have it); FreeSurfer files only for :data:`FREESURFER_SUBJECTS` or a
    subject whose FreeSurfer folder exists.
    """
    root = Path(root).expanduser()
    xfm = xfm or f"{subject}_auto"
    pdir = f"{PYCORTEX}/{subject}"
    out: list[str] = []
    for kind in ("wm", "pia", "inflated", "flat"):
        for h in ("lh", "rh"):
            npz = f"{pdir}/surfaces/{kind}_{h}.npz"
            out.append(npz if (root / npz).exists() or (root / npz).is_symlink() else f"{pdir}/surfaces/{kind}_{h}.gii")
    t = f"{pdir}/transforms/{xfm}"
    out += [f"{t}/matrices.xfm", f"{t}/reference.nii.gz", f"{t}/mask_thick.nii.gz"]
    cort = f"{t}/mask_cortical.nii.gz"
    if (root / cort).exists() or (root / cort).is_symlink():
        out.append(cort)
    out.append(f"{pdir}/surface-info/curvature.npz")
    fs: list[str] = []
    if subject in FREESURFER_SUBJECTS or (root / FREESURFER / subject).exists():
        fs = [f"{FREESURFER}/{subject}/surf/{h}.sphere.reg" for h in ("lh", "rh")]
    return {"pycortex": out, "freesurfer": fs}


def surface_get_command(root: str | os.PathLike, subjects: Sequence[str], files: Sequence[str] | None = None) -> str:
    """The ``datalad get`` command for the surface files of ``subjects`` (or exactly ``files``)."""
    if files is None:
        files = []
        for s in subjects:
            files += [f"{PYCORTEX}/{s}/surfaces", f"{PYCORTEX}/{s}/transforms/{s}_auto",
                      f"{PYCORTEX}/{s}/surface-info/curvature.npz"]
            if s in FREESURFER_SUBJECTS:
                files += [f"{FREESURFER}/{s}/surf/lh.sphere.reg", f"{FREESURFER}/{s}/surf/rh.sphere.reg"]
    return f"cd {root} && datalad get " + " ".join(files)


def _subject_dirs(root: Path) -> dict[str, Path]:
    base = root / DERIV / "preprocessed_data"
    if not base.is_dir():
        raise DataNotFoundError(
            f"{base} does not exist: {root} is not a ds003020 folder. Get it with `{_INSTALL}` "
            f"then `{get_command(root)}`"
        )
    return {p.name: p for p in sorted(base.iterdir()) if p.is_dir()}


def _read_respdict(root: Path) -> dict[str, int]:
    p = check_data_file(root / DERIV / "respdict.json", what="respdict", hint=f"Get it with `{get_command(root)}`")
    try:
        raw = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{p}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict) or not all(isinstance(v, int) and v > 20 for v in raw.values()):
        raise ValidationError(f"{p}: must map story names to untrimmed TR counts (integers > 20)")
    return raw


def _hf5_shape(path: Path) -> tuple[int, ...]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise ValidationError(f"{path}: has no dataset 'data' (keys: {list(f.keys())})")
            return tuple(f["data"].shape)
    except OSError as exc:
        raise ValidationError(f"{path}: not a readable HDF5 file ({exc})") from exc


def _read_hf5(path: Path) -> np.ndarray:
    """A response file's ``data`` (float32), the file checked first (missing, not downloaded)."""
    check_data_file(path, what="response file")
    return _read_hf5_any(path)


def load(
    root: str | os.PathLike | None,
    subjects: Sequence[str] | None = None,
    test_stories: Sequence[str] | None = None,
    train_stories: Sequence[str] | None = None,
    stories: Sequence[str] | None = None,
    check_shapes: bool = True,
    tr: float = TR,
    *,
    surfaces: bool = True,
    pycortex_db: str | os.PathLike | None = None,
    freesurfer_dir: str | os.PathLike | None = None,
    xfm: str | None = None,
    repeats_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Load ds003020 from ``root``.

    Parameters
    ----------
    root : path
        The dataset folder (holding ``derivative/``).
    subjects : sequence of str, optional
        E.g. ``["UTS01"]``; default: every subject folder present.
    test_stories : sequence of str, optional
        Held-out stories; default the standard split's ``wheretheressmoke`` (when
        present; otherwise no test story).
    train_stories : sequence of str, optional
        Default: every other story.
    stories : sequence of str, optional
        Restrict to these stories.
    check_shapes : bool
        Read each ``.hf5`` header now and check its rows against the TR grid and its
        voxel count against the subject's other stories (no arrays are read).
    tr : float
        Repetition time (2.0 s nominal).
    surfaces : bool
        Read each subject's pycortex transform and mask (when present) so that
        ``space(subj)`` maps its voxels to its surface and fsaverage; the mask must have
        as many voxels as the ``.hf5`` columns (else a ValidationError naming both).
        False: placeholder volumes, nothing read.
    pycortex_db, freesurfer_dir : path, optional
        Default ``root/derivative/pycortex-db`` and ``root/derivative/freesurfer_subjdir``.
    xfm : str, optional
        pycortex transform name (default ``<SUBJ>_auto``).
    repeats_dir : path, optional
        Preprocessed single repeats of the test stories, which ds003020 does not provide
        (:data:`NO_REPEATS`): ``<repeats_dir>/<SUBJ>/<story>*.hf5``, each file with a
        dataset ``data`` of one repeat (TRs x voxels) or several (repeats x TRs x voxels),
        the same rows and voxel columns as the averaged ``.hf5``. At least 2 repeats per
        subject and story; noise ceilings are then computed from them.

    Raises
    ------
    DataNotFoundError, NotDownloadedError, ValidationError
        With the file and, for missing data, the command that gets it.
    """
    if root is None:
        raise ValidationError("lebel2023: root= (the ds003020 folder) is required")
    root = Path(root).expanduser()
    found, subjects = _subjects(root, subjects)
    respdict = _read_respdict(root)
    files = _response_files(root, found, subjects, stories)
    names = sorted({st for _, st in files})
    story_objs = _read_stories(root, names, respdict, subjects, tr)
    n_trs = {s.name: s.n_trs for s in story_objs}
    if check_shapes:
        for subj in subjects:
            _check_shapes(subj, files, n_trs, respdict)
    loaders = {k: (lambda p=p: _read_hf5(p)) for k, p in files.items()}
    responses = Responses(loaders, {k: str(p) for k, p in files.items()}, n_trs)
    train, test = _split(root, subjects, names, n_trs, test_stories, train_stories)
    spaces, surface_notes = _subject_spaces(subjects, files, root, surfaces=surfaces, pycortex_db=pycortex_db,
                                            freesurfer_dir=freesurfer_dir, xfm=xfm)
    repeats = _repeat_loaders(Path(repeats_dir).expanduser(), subjects, test, n_trs, spaces, check_shapes) \
        if repeats_dir is not None else {}
    info: dict[str, Any] = {"root": str(root), "respdict": {n: respdict[n] for n in names}, "tr": tr,
                            "surfaces": surface_notes,
                            "ceiling": f"from the repeats in {repeats_dir}" if repeats else NO_REPEATS}
    return Dataset("lebel2023", story_objs, subjects, spaces, responses, train, test, repeats=repeats, info=info)


def _subjects(root: Path, subjects: Sequence[str] | None) -> tuple[dict[str, Path], list[str]]:
    """The subject folders under ``root`` and the subjects asked for (default: all), each with a folder."""
    found = _subject_dirs(root)
    subjects = list(subjects) if subjects is not None else list(found)
    missing = [s for s in subjects if s not in found]
    if missing:
        raise DataNotFoundError(
            f"lebel2023: no folder {root / DERIV / 'preprocessed_data'}/{missing[0]} "
            f"(subjects present: {', '.join(found) or 'none'}); get it with `{get_command(root, missing)}`"
        )
    if not subjects:
        raise DataNotFoundError(f"lebel2023: no subject folders under {root / DERIV / 'preprocessed_data'}")
    return found, subjects


def _response_files(
    root: Path, found: dict[str, Path], subjects: list[str], stories: Sequence[str] | None
) -> dict[tuple[str, str], Path]:
    """Each subject's ``.hf5`` files by (subject, story), of ``stories`` only when given; all downloaded."""
    files: dict[tuple[str, str], Path] = {}
    pointers: list[Path] = []
    for subj in subjects:
        for p in sorted(found[subj].glob("*.hf5")):
            if stories is not None and p.stem not in stories:
                continue
            if is_annex_pointer(p):
                pointers.append(p)
            files[(subj, p.stem)] = p
        if not any(k[0] == subj for k in files):
            raise DataNotFoundError(f"lebel2023: {found[subj]} holds no .hf5 files; get them with `{get_command(root, [subj])}`")
    if pointers:
        raise NotDownloadedError(
            f"lebel2023: {len(pointers)} response files are git-annex pointers, not data (first: {pointers[0]}). "
            f"Get them with `{get_command(root, sorted({p.parent.name for p in pointers}))}`"
        )
    return files


def _read_stories(root: Path, names: list[str], respdict: dict[str, int], subjects: list[str], tr: float) -> list[Story]:
    """The stories ``names`` from their TextGrids, on the TR grid their ``respdict`` counts give."""
    from ..transcripts import story_from_textgrid

    story_objs: list[Story] = []
    for name in names:
        if name not in respdict:
            raise ValidationError(f"{root / DERIV / 'respdict.json'}: has no entry for story {name!r}")
        tg = root / DERIV / "TextGrids" / f"{name}.TextGrid"
        if is_annex_pointer(tg):
            raise NotDownloadedError(f"TextGrid {tg} is a git-annex pointer, not the data. Get it with `{get_command(root, subjects)}`")
        if not tg.exists():
            raise DataNotFoundError(f"lebel2023: story {name!r} has responses but no transcript: {tg} does not exist")
        story_objs.append(story_from_textgrid(tg, tr, lebel_tr_times(respdict[name], tr=tr), name=name))
    return story_objs


def _check_shapes(subj: str, files: dict[tuple[str, str], Path], n_trs: dict[str, int], respdict: dict[str, int]) -> None:
    """Each of ``subj``'s ``.hf5`` headers: 2-D, the story's rows, the voxels of the subject's other stories."""
    seen: tuple[int, Path] | None = None
    for (s, name), p in files.items():
        if s != subj:
            continue
        shape = _hf5_shape(p)
        if len(shape) != 2:
            raise ValidationError(f"{p}: dataset 'data' must be 2-D (TRs x voxels), got shape {shape}")
        if shape[0] != n_trs[name]:
            raise ValidationError(
                f"{p}: has {shape[0]} TRs but respdict.json says {respdict[name]} untrimmed TRs, which gives "
                f"{n_trs[name]} rows after trimming; features and responses would not line up"
            )
        if seen is None:
            seen = (shape[1], p)
        elif shape[1] != seen[0]:
            raise ValidationError(f"{p}: has {shape[1]} voxels but {seen[1]} has {seen[0]}; a subject's stories must share voxels")


def _split(
    root: Path,
    subjects: list[str],
    names: list[str],
    n_trs: dict[str, int],
    test_stories: Sequence[str] | None,
    train_stories: Sequence[str] | None,
) -> tuple[list[str], list[str]]:
    """(train, test) stories: those given (each with responses), else the standard split of ``names``."""
    if test_stories is None:
        test = [TEST_STORY] if TEST_STORY in n_trs else []
    else:
        unknown_test = [s for s in test_stories if s not in n_trs]
        if unknown_test:
            raise ValidationError(f"lebel2023: test_stories {unknown_test} have no responses under {root} for {subjects}")
        test = list(test_stories)
    if train_stories is None:
        train = [s for s in names if s not in test]
    else:
        bad = [s for s in train_stories if s not in n_trs]
        if bad:
            raise ValidationError(f"lebel2023: train_stories {bad} have no responses for subjects {subjects}")
        train = list(train_stories)
    return train, test


def _subject_spaces(subjects: list[str], files: dict[tuple[str, str], Path], root: Path, **options: Any
                    ) -> tuple[dict[str, Space], dict[str, str]]:
    """Each subject's space and what was read for it (:func:`_volume_space`; ``info["surfaces"]``)."""
    spaces, notes = {}, {}
    for s in subjects:
        spaces[s], notes[s] = _volume_space(s, files, root, **options)
    return spaces, notes


def _volume_space(
    subject: str,
    files: dict[tuple[str, str], Path],
    root: Path | None = None,
    *,
    surfaces: bool = True,
    pycortex_db: str | os.PathLike | None = None,
    freesurfer_dir: str | os.PathLike | None = None,
    xfm: str | None = None,
) -> tuple[Space, str]:
    """The subject's :class:`~brainalign.surfaces.subject.SubjectSpace` and "ok", or a placeholder and why.

    The voxel count comes from the first ``.hf5`` header; the pycortex mask with that many
    voxels is the subject's mask. Without the pycortex files the space is a placeholder
    named ``<SUBJ>`` with a flat mask of the right size (a 1-voxel mask when no header can
    be read), and the reason says what is missing and how to get it.
    """
    n, first = 1, None
    for (s, _), p in files.items():
        if s == subject:
            first = p
            try:
                n = _hf5_shape(p)[1]
            except (ValidationError, IndexError):
                n = 1
            break
    placeholder = Space.volume(subject, np.ones((n, 1, 1), dtype=bool))
    if not surfaces or root is None:
        return placeholder, "not read (surfaces=False)"
    pdir = (Path(pycortex_db).expanduser() if pycortex_db is not None else root / PYCORTEX) / subject
    fsdir = (Path(freesurfer_dir).expanduser() if freesurfer_dir is not None else root / FREESURFER) / subject
    hint = f"Get it with `{surface_get_command(root, [subject])}`"
    if not pdir.is_dir():
        why = f"no pycortex database {pdir}; {hint[0].lower()}{hint[1:]}"
        log.info("lebel2023: %s: %s (its space is a placeholder volume without surfaces)", subject, why)
        return placeholder, why
    from ..surfaces.subject import SubjectSpace

    fs_files = [f"{FREESURFER}/{subject}/surf/{h}.sphere.reg" for h in ("lh", "rh")]
    if subject in FREESURFER_SUBJECTS:
        sphere_hint = f"Get them with `{surface_get_command(root, [subject], fs_files)}`"
    else:
        sphere_hint = f"(ds003020 has FreeSurfer folders for {FREESURFER_SUBJECTS[0]}-{FREESURFER_SUBJECTS[-1]} only)"
    try:
        space = SubjectSpace.from_pycortex(
            subject, pdir, xfm=xfm, n_targets=n, targets_file=first, freesurfer_dir=fsdir, hint=hint,
            sphere_hint=sphere_hint,
        )
    except DataNotFoundError as exc:  # includes NotDownloadedError
        log.info("lebel2023: %s: %s (its space is a placeholder volume without surfaces)", subject, exc)
        return placeholder, str(exc)
    return space, "ok" if space.can_project else f"ok on its own surface; no fsaverage: {space.no_sphere}"


def _repeat_loaders(
    folder: Path,
    subjects: Sequence[str],
    test: Sequence[str],
    n_trs: dict[str, int],
    spaces: dict[str, Space],
    check_shapes: bool,
) -> dict[tuple[str, str], Any]:
    """Loaders of the user's preprocessed repeats: ``<folder>/<SUBJ>/<story>*.hf5``."""
    if not folder.is_dir():
        raise DataNotFoundError(f"repeats_dir {folder} does not exist")
    out: dict[tuple[str, str], Any] = {}
    for subj in subjects:
        for story in test:
            found = sorted(p for p in (folder / subj).glob(f"{story}*.hf5"))
            if not found:
                continue
            n_rep = 0
            for p in found:
                check_data_file(p, what="repeat file")
                shape = _hf5_shape(p)
                if len(shape) not in (2, 3):
                    raise ValidationError(f"{p}: 'data' must be (TRs x voxels) or (repeats x TRs x voxels), got {shape}")
                rows, cols = shape[-2], shape[-1]
                if rows != n_trs[story]:
                    raise ValidationError(
                        f"{p}: has {rows} TRs but {story} has {n_trs[story]} rows (trim the repeat as the averaged "
                        ".hf5 is trimmed)"
                    )
                if check_shapes and cols != spaces[subj].n_targets:
                    raise ValidationError(
                        f"{p}: has {cols} voxels but {subj}'s responses have {spaces[subj].n_targets}; repeats must "
                        "have the averaged file's voxel columns"
                    )
                n_rep += 1 if len(shape) == 2 else shape[0]
            if n_rep < 2:
                raise ValidationError(f"{folder / subj}: {story} has {n_rep} repeat(s) ({found[0].name}); a noise ceiling needs >= 2")

            def load(paths=tuple(found)) -> np.ndarray:
                arrs = []
                for p in paths:
                    a = _read_hf5_any(p)
                    arrs.extend([a] if a.ndim == 2 else list(a))
                return np.stack(arrs)

            out[(subj, story)] = load
    if not out:
        raise ValidationError(
            f"repeats_dir {folder}: no <SUBJ>/<story>*.hf5 files for subjects {list(subjects)} and test stories {list(test)}"
        )
    missing = [s for s in subjects if not any(k[0] == s for k in out)]
    if missing:
        log.warning("lebel2023: no repeats in %s for subjects %s: no noise ceiling for them", folder, missing)
    return out


def _read_hf5_any(path: Path) -> np.ndarray:
    """An ``.hf5`` file's dataset ``data`` as float32 (responses, or repeats of any rank)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return np.asarray(f["data"][...], dtype=np.float32)
    except (OSError, KeyError) as exc:
        raise ValidationError(f"{path}: cannot read dataset 'data' ({exc})") from exc


def check(root: str | os.PathLike, subjects: Sequence[str] | None = None, surfaces: bool = True) -> dict[str, Any]:
    """What of ds003020 is present under ``root``: files present, missing, not downloaded.

    Returns a dict with ``present`` / ``missing`` / ``not_downloaded`` (lists of paths,
    relative to ``root``), ``ok`` (bool) and ``command`` (what gets the missing files).
    Expected files are the subjects' ``.hf5`` files found on disk (or symlinks), every
    story's TextGrid and ``respdict.json``: ``ok`` means the dataset loads.

    With ``surfaces`` (default), also the pycortex and FreeSurfer files that the subjects'
    surface mapping reads (:func:`surface_files`: surfaces, transform, masks, curvature,
    ``sphere.reg``), under ``surface_present`` / ``surface_missing`` /
    ``surface_not_downloaded``, with ``surface_ok`` and ``surface_command`` (the
    ``datalad get`` line for the missing ones); ``problems`` holds them in words (printed
    by ``brainalign datasets check``). They are needed for fsaverage projection, surface
    ROIs and flatmaps, not for loading, so they do not change ``ok``.
    """
    root = Path(root).expanduser()
    present: list[str] = []
    missing: list[str] = []
    pointers: list[str] = []

    def look(p: Path) -> None:
        _sort_file(root, p, present, missing, pointers)

    look(root / DERIV / "respdict.json")
    base = root / DERIV / "preprocessed_data"
    subs = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if subjects:
        for s in subjects:
            if s not in subs:
                missing.append(f"{DERIV}/preprocessed_data/{s}/")
        subs = [s for s in subs if s in subjects]
    if not subs and not subjects:
        missing.append(f"{DERIV}/preprocessed_data/")
    stories: set[str] = set()
    for s in subs:
        for p in sorted((base / s).iterdir()):
            if p.name.endswith(".hf5"):
                stories.add(p.name[:-4])
                look(p)
    for name in sorted(stories):
        look(root / DERIV / "TextGrids" / f"{name}.TextGrid")
    need = sorted({Path(p).parts[2] for p in missing + pointers if "preprocessed_data" in p and len(Path(p).parts) > 2})
    cmd = get_command(root, need or subs or subjects)
    if not (root / ".datalad").exists() and not (root / ".git").exists() and missing:
        cmd = f"{_INSTALL} {root} && " + cmd
    out = {"present": present, "missing": missing, "not_downloaded": pointers, "ok": not missing and not pointers,
           "command": cmd}
    if surfaces:
        out.update(_check_surfaces(root, subs or list(subjects or [])))
    return out


def _sort_file(root: Path, p: Path, present: list[str], missing: list[str], pointers: list[str]) -> None:
    """Append ``p`` (relative to ``root``) to the list it belongs to: a git-annex pointer
    (not downloaded), a file that is there, or a missing one."""
    rel = str(p.relative_to(root))
    if is_annex_pointer(p):
        pointers.append(rel)
    elif p.exists():
        present.append(rel)
    else:
        missing.append(rel)


def _check_surfaces(root: Path, subjects: Sequence[str]) -> dict[str, Any]:
    present: list[str] = []
    missing: list[str] = []
    pointers: list[str] = []
    notes: list[str] = []
    for s in subjects:
        files = surface_files(root, s)
        for rel in files["pycortex"] + files["freesurfer"]:
            _sort_file(root, root / rel, present, missing, pointers)
        if not files["freesurfer"]:
            notes.append(f"{s} has no FreeSurfer folder in ds003020 (only {FREESURFER_SUBJECTS[0]}-"
                         f"{FREESURFER_SUBJECTS[-1]} have one): its maps on its own surface and flatmap work, "
                         "fsaverage projection (and fsaverage ROIs) does not")
    get: list[str] = []
    for rel in missing + pointers:
        parts = rel.split("/")
        if parts[1] == "pycortex-db" and parts[3] in ("surfaces", "transforms"):
            rel = "/".join(parts[: 4 if parts[3] == "surfaces" else 5])
        if rel not in get:
            get.append(rel)
    cmd = surface_get_command(root, subjects, get) if get else ""
    problems = []
    if get:
        first = (missing + pointers)[0]
        problems.append(
            f"surfaces: {len(missing)} files missing, {len(pointers)} not downloaded (first: {first}); they are needed "
            "for fsaverage projection, surface ROIs and flatmaps, not for loading. Get them with: " + cmd
        )
    problems += notes
    return {"surface_present": present, "surface_missing": missing, "surface_not_downloaded": pointers,
            "surface_ok": not get, "surface_command": cmd, "problems": problems}


def write(dataset: Dataset, root: str | os.PathLike) -> Path:
    """Write ``dataset`` in ds003020's layout (responses, TextGrids, respdict.json).

    The dataset's stories must use the ds003020 TR grid (``simulate(grid="lebel")``):
    ``info["respdict"]`` gives the untrimmed counts. Files are written to temporary
    names and renamed, so an interrupted write leaves no complete-looking file.
    """
    import h5py
    from praatio import textgrid as tgio
    from praatio.utilities.constants import Interval

    root = Path(root)
    respdict = dataset.info.get("respdict")
    if not respdict:
        raise ValidationError("write(): the dataset has no info['respdict']; simulate it with grid='lebel'")
    for name, st in dataset.stories.items():
        expected = lebel_tr_times(respdict[name], tr=st.tr)
        if not np.array_equal(expected, st.tr_times):
            raise ValidationError(f"write(): story {name!r} is not on the ds003020 TR grid; simulate it with grid='lebel'")
    tg_dir = root / DERIV / "TextGrids"
    tg_dir.mkdir(parents=True, exist_ok=True)
    for name, st in dataset.stories.items():
        xmax = float(max(st.offsets[-1], st.tr_times[-1])) + 1.0
        tg = tgio.Textgrid(minTimestamp=0.0, maxTimestamp=xmax)
        words = [Interval(float(a), float(b), w) for w, a, b in zip(st.words, st.onsets, st.offsets) if b > a]
        if len(words) != st.n_words:
            raise ValidationError(f"write(): story {name!r} has zero-length words, which a TextGrid cannot hold")
        if st.phones is not None and len(st.phones[0]):
            phones = [Interval(float(a), float(b), p) for p, a, b in zip(*st.phones) if b > a]
        else:
            phones = [Interval(float(a), float(b), "sp") for a, b in zip(st.onsets, st.offsets)]
        tg.addTier(tgio.IntervalTier("phone", phones, 0.0, xmax))
        tg.addTier(tgio.IntervalTier("word", words, 0.0, xmax))
        with atomic_path(tg_dir / f"{name}.TextGrid") as tmp:
            tg.save(str(tmp), format="long_textgrid", includeBlankSpaces=True)
    for subj in dataset.subjects:
        d = root / DERIV / "preprocessed_data" / subj
        d.mkdir(parents=True, exist_ok=True)
        for name in dataset.stories_of(subj):
            with atomic_path(d / f"{name}.hf5") as tmp, h5py.File(tmp, "w") as f:
                f.create_dataset("data", data=dataset.responses(subj, name))
    atomic_write_json(root / DERIV / "respdict.json", {k: int(v) for k, v in respdict.items()}, indent=1)
    return root
