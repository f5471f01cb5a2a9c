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

__all__ = ["load", "write", "check", "TEST_STORY", "TR", "get_command"]

TEST_STORY = "wheretheressmoke"
TR = 2.0
DERIV = "derivative"


def get_command(root: str | os.PathLike, subjects: Sequence[str] | None = None) -> str:
    """The ``datalad get`` command that fetches what :func:`load` needs."""
    subs = " ".join(f"{DERIV}/preprocessed_data/{s}" for s in (subjects or ["UTS01"]))
    return f"cd {root} && datalad get {subs} {DERIV}/TextGrids {DERIV}/respdict.json"


_INSTALL = "datalad install https://github.com/OpenNeuroDatasets/ds003020.git"


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
    import h5py

    check_data_file(path, what="response file")
    try:
        with h5py.File(path, "r") as f:
            return np.asarray(f["data"][...], dtype=np.float32)
    except (OSError, KeyError) as exc:
        raise ValidationError(f"{path}: cannot read dataset 'data' ({exc})") from exc


def load(
    root: str | os.PathLike | None,
    subjects: Sequence[str] | None = None,
    test_stories: Sequence[str] | None = None,
    train_stories: Sequence[str] | None = None,
    stories: Sequence[str] | None = None,
    check_shapes: bool = True,
    tr: float = TR,
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

    Raises
    ------
    DataNotFoundError, NotDownloadedError, ValidationError
        With the file and, for missing data, the command that gets it.
    """
    if root is None:
        raise ValidationError("lebel2023: root= (the ds003020 folder) is required")
    root = Path(root).expanduser()
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
    respdict = _read_respdict(root)

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
    names = sorted({st for _, st in files})
    story_objs: list[Story] = []
    for name in names:
        if name not in respdict:
            raise ValidationError(f"{root / DERIV / 'respdict.json'}: has no entry for story {name!r}")
        tg = root / DERIV / "TextGrids" / f"{name}.TextGrid"
        if is_annex_pointer(tg):
            raise NotDownloadedError(f"TextGrid {tg} is a git-annex pointer, not the data. Get it with `{get_command(root, subjects)}`")
        if not tg.exists():
            raise DataNotFoundError(f"lebel2023: story {name!r} has responses but no transcript: {tg} does not exist")
        from ..transcripts import story_from_textgrid

        story_objs.append(story_from_textgrid(tg, tr, lebel_tr_times(respdict[name], tr=tr), name=name))
    n_trs = {s.name: s.n_trs for s in story_objs}

    if check_shapes:
        for subj in subjects:
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

    loaders = {k: (lambda p=p: _read_hf5(p)) for k, p in files.items()}
    responses = Responses(loaders, {k: str(p) for k, p in files.items()}, n_trs)
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
    spaces = {s: _volume_space(s, files) for s in subjects}
    info: dict[str, Any] = {"root": str(root), "respdict": {n: respdict[n] for n in names}, "tr": tr}
    return Dataset("lebel2023", story_objs, subjects, spaces, responses, train, test, info=info)


def _volume_space(subject: str, files: dict[tuple[str, str], Path]) -> Space:
    """A placeholder volume space: the voxel count is known only from the files.

    ds003020's cortical voxel masks live in the subjects' pycortex databases, not in
    the derivative folder read here, so the space is named ``<SUBJ>`` with a flat mask
    of the right size when the header can be read (a 1-voxel mask otherwise).
    """
    n = 1
    for (s, _), p in files.items():
        if s == subject:
            try:
                n = _hf5_shape(p)[1]
            except (ValidationError, IndexError):
                n = 1
            break
    return Space.volume(subject, np.ones((n, 1, 1), dtype=bool))


def check(root: str | os.PathLike, subjects: Sequence[str] | None = None) -> dict[str, Any]:
    """What of ds003020 is present under ``root``: files present, missing, not downloaded.

    Returns a dict with ``present`` / ``missing`` / ``not_downloaded`` (lists of paths,
    relative to ``root``), ``ok`` (bool) and ``command`` (what gets the missing files).
    Expected files are the subjects' ``.hf5`` files found on disk (or symlinks), every
    story's TextGrid and ``respdict.json``.
    """
    root = Path(root).expanduser()
    present: list[str] = []
    missing: list[str] = []
    pointers: list[str] = []

    def look(p: Path) -> None:
        rel = str(p.relative_to(root))
        if is_annex_pointer(p):
            pointers.append(rel)
        elif p.exists():
            present.append(rel)
        else:
            missing.append(rel)

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
    return {"present": present, "missing": missing, "not_downloaded": pointers, "ok": not missing and not pointers,
            "command": cmd}


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
