"""Narratives, Nastase et al. 2021, OpenNeuro ds002345 ("narratives").

Layout read (under ``root``)::

    derivatives/afni-smooth/sub-XXX/func/sub-XXX_task-T[_run-N]_space-fsaverage6_hemi-{L,R}_desc-sm6.func.gii
    derivatives/afni-nosmooth/sub-XXX/func/sub-XXX_task-T[_run-N]_space-fsaverage6_hemi-{L,R}_desc-clean.func.gii
    sub-XXX/func/sub-XXX_task-T[_run-N]_events.tsv      stimulus onset in the run (first row's ``onset``)
    stimuli/gentle/T/align.json                         Gentle forced alignment
    code/scan_exclude.json                              scans to leave out (optional)

One story per task. A scan's rows are at ``arange(n_TRs) * 1.5 - onset`` seconds from
the audio's start; scans of one task whose onsets differ by whole TRs are aligned by
shifting rows, and every scan is cut to the rows that all of them cover (the story's
TR grid). A subject's several runs of a task are treated as repeated presentations:
``responses`` is their average (z-scored) and ``repeats`` the runs.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_path
from ..errors import DataNotFoundError, ValidationError, check_data_file, is_annex_pointer
from ..stimulus import FSAVERAGE_SIZES, Responses, Space, Story
from ..timing import zscore
from .base import Dataset

log = logging.getLogger(__name__)

__all__ = ["load", "write", "check", "read_gentle", "TR"]

TR = 1.5
_INSTALL = "datalad install https://github.com/OpenNeuroDatasets/ds002345.git"
_SCAN = re.compile(r"^(sub-[^_]+)_task-([^_]+)(?:_run-(\d+))?_space-([^_]+)_hemi-L_desc-([^_.]+)\.func\.gii$")


def _pipeline(smooth: bool) -> tuple[str, str]:
    return ("afni-smooth", "sm6") if smooth else ("afni-nosmooth", "clean")


def get_command(root: str | os.PathLike, subjects: Sequence[str] | None = None, smooth: bool = True) -> str:
    pipe, _ = _pipeline(smooth)
    subs = " ".join(f"derivatives/{pipe}/{s}" for s in (subjects or ["sub-001"]))
    return f"cd {root} && datalad get {subs} stimuli/gentle code/scan_exclude.json"


# ------------------------------------------------------------------------- transcripts
def read_gentle(path: str | os.PathLike, not_found: str = "interpolate") -> tuple[list[str], np.ndarray, np.ndarray]:
    """Words, onsets and offsets from a Gentle ``align.json``.

    Words whose ``case`` is not ``"success"`` (``"not-found-in-audio"``) have no times:
    with ``not_found="interpolate"`` they are spread evenly between the end of the
    previous aligned word and the start of the next one (0.25 s each before the first
    or after the last aligned word); with ``"drop"`` they are left out. The word text
    is Gentle's ``word`` (the transcript's spelling), never ``alignedWord`` (which can
    be ``<unk>``).
    """
    if not_found not in ("interpolate", "drop"):
        raise ValidationError(f"not_found must be 'interpolate' or 'drop', got {not_found!r}")
    p = check_data_file(path, what="Gentle transcript")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        entries = doc["words"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValidationError(f"{p}: not a Gentle align.json with a 'words' list ({exc})") from exc
    words: list[str] = []
    on: list[float] = []
    off: list[float] = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "word" not in e:
            raise ValidationError(f"{p}: words[{i}] has no 'word'")
        ok = e.get("case") == "success" and "start" in e and "end" in e
        if not ok and not_found == "drop":
            continue
        words.append(str(e["word"]))
        on.append(float(e["start"]) if ok else np.nan)
        off.append(float(e["end"]) if ok else np.nan)
    if not words:
        raise ValidationError(f"{p}: no words")
    onsets, offsets = np.array(on), np.array(off)
    missing = np.isnan(onsets)
    if missing.all():
        raise ValidationError(f"{p}: no word was aligned to the audio")
    i = 0
    n = len(words)
    while i < n:
        if not missing[i]:
            i += 1
            continue
        j = i
        while j < n and missing[j]:
            j += 1
        k = j - i
        lo = offsets[i - 1] if i > 0 else None
        hi = onsets[j] if j < n else None
        if lo is None:
            lo = max(0.0, hi - 0.25 * k)
        if hi is None:
            hi = lo + 0.25 * k
        hi = max(hi, lo)
        edges = lo + (hi - lo) * np.arange(k + 1) / k
        onsets[i:j], offsets[i:j] = edges[:-1], edges[1:]
        i = j
    if np.any(np.diff(onsets) < 0):
        order_bad = int(np.flatnonzero(np.diff(onsets) < 0)[0])
        raise ValidationError(f"{p}: word {order_bad + 1} ({words[order_bad + 1]!r}) starts before the word before it")
    return words, onsets, offsets


# ------------------------------------------------------------------------------ GIfTI
def _gifti_header(path: Path) -> tuple[int, int]:
    """(number of data arrays, length of the first) read from the XML, data not decoded."""
    count, dim0, tail = 0, None, b""
    pat = re.compile(rb"<DataArray\b[^>]*?>", re.S)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            buf = tail + chunk
            last_end = 0
            for m in pat.finditer(buf):
                count += 1
                last_end = m.end()
                if dim0 is None:
                    d = re.search(rb'Dim0="(\d+)"', m.group(0))
                    dim0 = int(d.group(1)) if d else None
            tail = buf[max(last_end, len(buf) - 4096):]
    if count == 0 or dim0 is None:
        raise ValidationError(f"{path}: not a GIfTI time series (no data arrays found)")
    return count, dim0


def _read_gifti(path: Path) -> np.ndarray:
    import nibabel as nib

    check_data_file(path, what="GIfTI file")
    try:
        img = nib.load(str(path))
        return np.column_stack([np.asarray(d.data, dtype=np.float32).ravel() for d in img.darrays]).T
    except Exception as exc:  # nibabel raises many kinds on a corrupt file
        raise ValidationError(f"{path}: cannot read GIfTI ({type(exc).__name__}: {exc})") from exc


def _read_onset(path: Path) -> float:
    check_data_file(path, what="events file")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or "onset" not in rows[0]:
        raise ValidationError(f"{path}: needs an 'onset' column and at least one row")
    try:
        return float(rows[0]["onset"])
    except ValueError as exc:
        raise ValidationError(f"{path}: onset {rows[0]['onset']!r} is not a number") from exc


def _exclusions(root: Path) -> list[str]:
    p = root / "code" / "scan_exclude.json"
    if not p.exists() or is_annex_pointer(p):
        return []
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{p}: not valid JSON ({exc})") from exc
    items = [x for v in raw.values() for x in v] if isinstance(raw, dict) else list(raw)
    return [str(x) for x in items]


# ------------------------------------------------------------------------------- load
def _scans(root: Path, smooth: bool, space: str) -> dict[tuple[str, str, int], tuple[Path, Path]]:
    pipe, desc = _pipeline(smooth)
    base = root / "derivatives" / pipe
    if not base.is_dir():
        raise DataNotFoundError(f"{base} does not exist. Get the data with `{_INSTALL}` then `{get_command(root, smooth=smooth)}`")
    out: dict[tuple[str, str, int], tuple[Path, Path]] = {}
    for left in sorted(base.glob(f"sub-*/func/*_space-{space}_hemi-L_desc-{desc}.func.gii")):
        m = _SCAN.match(left.name)
        if not m:
            continue
        subj, task, run = m.group(1), m.group(2), int(m.group(3) or 1)
        right = left.with_name(left.name.replace("_hemi-L_", "_hemi-R_"))
        out[(subj, task, run)] = (left, right)
    return out


def load(
    root: str | os.PathLike | None,
    subjects: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    smooth: bool = True,
    space: str = "fsaverage6",
    not_found: str = "interpolate",
    exclude: bool = True,
    test_stories: Sequence[str] = (),
    tr: float = TR,
) -> Dataset:
    """Load Narratives surface data from ``root``.

    Parameters
    ----------
    root : path
        The ds002345 folder.
    subjects : sequence of str, optional
        BIDS labels with ``sub-`` (default: all with surface data).
    tasks : sequence of str, optional
        Tasks (stories) to load (default: all found).
    smooth : bool
        ``afni-smooth`` (``desc-sm6``) or ``afni-nosmooth`` (``desc-clean``) data.
    space : str
        Surface named in the file names (``fsaverage6``).
    not_found : {"interpolate", "drop"}
        What to do with Gentle's ``not-found-in-audio`` words (see :func:`read_gentle`).
    exclude : bool
        Leave out the scans listed in ``code/scan_exclude.json``.
    test_stories : sequence of str
        Held-out tasks; the others are training stories.
    tr : float
        Repetition time (1.5 s).
    """
    if root is None:
        raise ValidationError("narratives: root= (the ds002345 folder) is required")
    root = Path(root).expanduser()
    scans = _scans(root, smooth, space)
    excl = _exclusions(root) if exclude else []
    kept: dict[tuple[str, str, int], tuple[Path, Path]] = {}
    for key, (left, right) in scans.items():
        subj, task, _ = key
        if subjects is not None and subj not in subjects:
            continue
        if tasks is not None and task not in tasks:
            continue
        if any(left.name.startswith(e) for e in excl):
            log.info("narratives: %s excluded by code/scan_exclude.json", left.name)
            continue
        kept[key] = (left, right)
    if subjects is not None:
        have = {k[0] for k in scans}
        absent = [s for s in subjects if s not in have]
        if absent:
            raise DataNotFoundError(f"narratives: no {space} surface data for {absent} under {root}; get it with `{get_command(root, absent, smooth)}`")
    if not kept:
        raise DataNotFoundError(f"narratives: no scans under {root} match (subjects={subjects}, tasks={tasks}, space={space})")

    # per scan: onset and TR count (headers only)
    meta: dict[tuple[str, str, int], tuple[float, int, int, int]] = {}
    for key, (left, right) in kept.items():
        subj, task, run = key
        for p in (left, right):
            check_data_file(p, what="GIfTI file", hint=f"Get it with `{get_command(root, [subj], smooth)}`")
        nl_t, nl = _gifti_header(left)
        nr_t, nr = _gifti_header(right)
        if nl_t != nr_t:
            raise ValidationError(f"{right}: has {nr_t} TRs but {left} has {nl_t}")
        stem = left.name.split("_space-")[0]
        events = root / subj / "func" / f"{stem}_events.tsv"
        meta[key] = (_read_onset(events), nl_t, nl, nr)

    story_objs: list[Story] = []
    loaders: dict[tuple[str, str], Any] = {}
    sources: dict[tuple[str, str], str] = {}
    repeats: dict[tuple[str, str], Any] = {}
    spaces: dict[str, Space] = {}
    for task in sorted({k[1] for k in kept}):
        keys = sorted(k for k in kept if k[1] == task)
        ref_onset = meta[keys[0]][0]
        shifts = {}
        for k in keys:
            d = (meta[k][0] - ref_onset) / tr
            shifts[k] = int(round(d))
            if abs(d - shifts[k]) * tr > 0.1:
                log.warning("narratives: %s onset differs from %s by %.2f s, not a whole TR; aligned to the nearest TR",
                            kept[k][0].name, kept[keys[0]][0].name, (d - shifts[k]) * tr)
        k0 = max(-shifts[k] for k in keys)
        k0 = max(k0, 0)
        k1 = min(meta[k][1] - shifts[k] for k in keys)
        if k1 - k0 < 2:
            raise ValidationError(f"narratives: the scans of task {task!r} share fewer than 2 TRs after alignment")
        tr_times = np.arange(k0, k1) * tr - ref_onset
        gentle = root / "stimuli" / "gentle" / task / "align.json"
        words, on, off = read_gentle(gentle, not_found=not_found)
        story_objs.append(Story(task, words, on, off, tr, tr_times, source=str(gentle)))
        for subj in sorted({k[0] for k in keys}):
            runs = [k for k in keys if k[0] == subj]
            parts = [(kept[k], k0 + shifts[k], k1 + shifts[k]) for k in runs]

            def one(part):
                (left, right), a, b = part
                return np.hstack([_read_gifti(left)[a:b], _read_gifti(right)[a:b]])

            if len(parts) == 1:
                loaders[(subj, task)] = lambda part=parts[0]: one(part)
            else:
                repeats[(subj, task)] = lambda parts=parts: np.stack([one(p) for p in parts])
                loaders[(subj, task)] = lambda parts=parts: zscore(
                    np.mean(np.stack([one(p) for p in parts]), axis=0)).astype(np.float32)
            sources[(subj, task)] = ", ".join(str(p[0][0]) for p in parts)
            _, _, nl, nr = meta[runs[0]]
            # the file names say which surface: each hemisphere of each run must match it
            sp_ = Space.fsaverage(space) if space in FSAVERAGE_SIZES else Space(space, "surface", (nl, nr))
            for k in runs:
                sp_.check_hemispheres(meta[k][2:], [str(p) for p in kept[k]])
            if subj in spaces and spaces[subj] != sp_:
                raise ValidationError(f"{sources[(subj, task)]}: vertex counts differ from {subj}'s other scans")
            spaces[subj] = sp_
    n_trs = {s.name: s.n_trs for s in story_objs}
    bad = [t for t in test_stories if t not in n_trs]
    if bad:
        raise ValidationError(f"narratives: test_stories {bad} are not among the loaded tasks {sorted(n_trs)}")
    subs = sorted(spaces)
    return Dataset(
        "narratives", story_objs, subs, spaces, Responses(loaders, sources, n_trs),
        [s for s in n_trs if s not in test_stories], list(test_stories), repeats=repeats,
        info={"root": str(root), "smooth": smooth, "space": space, "tr": tr, "excluded": excl},
    )


def check(root: str | os.PathLike, subjects: Sequence[str] | None = None, smooth: bool = True,
          space: str = "fsaverage6") -> dict[str, Any]:
    """Present / missing / not-downloaded files of the surface data, transcripts, events."""
    root = Path(root).expanduser()
    present, missing, pointers = [], [], []

    def look(p: Path) -> None:
        rel = str(p.relative_to(root))
        (pointers if is_annex_pointer(p) else present if p.exists() else missing).append(rel)

    pipe, desc = _pipeline(smooth)
    base = root / "derivatives" / pipe
    lefts = sorted(base.glob(f"sub-*/func/*_space-{space}_hemi-L_desc-{desc}.func.gii")) if base.is_dir() else []
    if subjects:
        lefts = [p for p in lefts if p.name.split("_")[0] in subjects]
    if not lefts:
        missing.append(f"derivatives/{pipe}/")
    tasks = set()
    for left in lefts:
        m = _SCAN.match(left.name)
        if not m:
            continue
        tasks.add(m.group(2))
        look(left)
        look(left.with_name(left.name.replace("_hemi-L_", "_hemi-R_")))
        look(root / m.group(1) / "func" / f"{left.name.split('_space-')[0]}_events.tsv")
    for t in sorted(tasks):
        look(root / "stimuli" / "gentle" / t / "align.json")
    cmd = get_command(root, subjects or sorted({p.name.split("_")[0] for p in lefts}) or None, smooth)
    return {"present": present, "missing": missing, "not_downloaded": pointers, "ok": not missing and not pointers,
            "command": cmd}


# ------------------------------------------------------------------------------ write
def write(dataset: Dataset, root: str | os.PathLike, smooth: bool = True) -> Path:
    """Write ``dataset`` (surface responses) in the Narratives layout.

    Each story must be on a uniform grid ``arange(n) * tr - onset`` (``simulate(grid=
    "narratives")``); ``onset = -tr_times[0]`` goes to ``events.tsv``. A story with
    repeats is written as runs ``_run-1..R`` (one per presentation). Subjects are
    written as ``sub-<name>``; the space name goes into the file names. Files are
    written under temporary names and renamed.
    """
    import nibabel as nib

    root = Path(root)
    pipe, desc = _pipeline(smooth)

    def atomic(path: Path, writer) -> None:
        with atomic_path(path) as tmp:
            writer(tmp)

    for name, st in dataset.stories.items():
        onset = -float(st.tr_times[0])
        if not np.array_equal(np.arange(st.n_trs) * st.tr - onset, st.tr_times):
            raise ValidationError(f"write(): story {name!r} is not on a uniform grid arange(n)*tr - onset; simulate with grid='narratives'")
        doc = {"transcript": st.text, "words": [
            {"word": w, "alignedWord": w.lower(), "case": "success", "start": float(a), "end": float(b)}
            for w, a, b in zip(st.words, st.onsets, st.offsets)]}
        atomic(root / "stimuli" / "gentle" / name / "align.json", lambda t, doc=doc: t.write_text(json.dumps(doc)))
    for subj in dataset.subjects:
        sp_ = dataset.space(subj)
        if not sp_.is_surface:
            raise ValidationError(f"write(): subject {subj!r} is not on a surface ({sp_})")
        label = subj if subj.startswith("sub-") else f"sub-{subj}"
        for name in dataset.stories_of(subj):
            st = dataset.stories[name]
            rep = dataset.repeats(subj, name)
            runs = [dataset.responses(subj, name)] if rep is None else list(rep)
            for r, data in enumerate(runs, start=1):
                stem = f"{label}_task-{name}" + (f"_run-{r}" if rep is not None else "")
                atomic(root / label / "func" / f"{stem}_events.tsv",
                       lambda t, st=st: t.write_text(f"onset\tduration\ttrial_type\n{-float(st.tr_times[0])!r}\t{st.duration!r}\tstory\n"))
                nl = sp_.hemi_sizes[0]
                for hemi, block in (("L", data[:, :nl]), ("R", data[:, nl:])):
                    img = nib.GiftiImage(darrays=[nib.gifti.GiftiDataArray(np.ascontiguousarray(row, dtype=np.float32))
                                                  for row in block])
                    fn = root / "derivatives" / pipe / label / "func" / f"{stem}_space-{sp_.name}_hemi-{hemi}_desc-{desc}.func.gii"
                    atomic(fn, lambda t, img=img: nib.save(img, str(t)))
    return root
