"""Narratives, Nastase et al. 2021, OpenNeuro ds002345 ("narratives").

Layout read (under ``root``)::

    derivatives/afni-smooth/sub-XXX/func/sub-XXX_task-T[_run-N]_space-fsaverage6_hemi-{L,R}_desc-sm6.func.gii
    derivatives/afni-nosmooth/sub-XXX/func/sub-XXX_task-T[_run-N]_space-fsaverage6_hemi-{L,R}_desc-clean.func.gii
    sub-XXX/func/sub-XXX_task-T[_run-N]_events.tsv      onset, duration, trial_type, stim_file of each row
    stimuli/gentle/<story>/align.json                   Gentle forced alignment of <story>_audio.wav
    code/scan_exclude.json                              scans to leave out (optional)

Stories and scans (:func:`story_segments`, :func:`plan`):

* A story is its audio file: ``stim_file`` without ``_audio.wav`` (``milkywayvodka``,
  ``shame``), not the task. Its time zero in a scan is the onset of the first row that
  plays that wav, ``music`` rows included: the wav starts with the music, and Gentle
  times are seconds from the wav's start (``pieman``: music at 0.0, story at 15.0 s;
  its words start about 15 s into the wav).
* A scan holds every story its ``story`` rows name (``task-schema``: two between movie
  clips). A story's TRs run from the end of the row before its first row (another
  story, a movie; else the scan's start) to :data:`HRF_LAG` seconds past the end of its
  last row, stopping earlier where the next row of something else begins, and at the
  scan's end. One wav's rows (``task-slumlordreach``: music, story, music, story) are
  one story.
* A scan's row ``k`` is at ``k * tr - zero`` seconds from the wav's start. Scans whose
  zeros differ by whole TRs share one TR grid (cut to the TRs all of them cover); a
  story heard on a grid offset by a fraction of a TR (the schema stories, onsets such as
  195.2 s) is a separate story ``<stem>@<offset>`` with its own TR times, the offset
  being the wav's onset modulo the TR. ``stories=`` and ``test_stories=`` take stems.
* A subject's several presentations of one wav (``pieman`` runs 1 and 2) are repeats:
  ``responses`` is their z-scored mean, ``repeats`` the single presentations. Different
  wavs of one task are different stories, never repeats.
* An events file without a ``stim_file`` column (files brainalign wrote before it read
  that column) names its story by the task.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_path
from ..errors import DataNotFoundError, ValidationError, check_data_file, is_annex_pointer
from ..stimulus import FSAVERAGE_SIZES, Responses, Space, Story
from ..timing import zscore
from .base import Dataset

log = logging.getLogger(__name__)

__all__ = ["load", "write", "check", "read_gentle", "read_events", "parse_events", "story_segments", "plan",
           "Row", "Segment", "Presentation", "Plan", "TR", "HRF_LAG"]

TR = 1.5
#: seconds of TRs kept past the end of a story's last row (the FIR delays reach 4 TRs = 6 s)
HRF_LAG = 6.0
_EPS = 1e-9
_INSTALL = "datalad install https://github.com/OpenNeuroDatasets/ds002345.git"
_SCAN = re.compile(r"^(sub-[^_]+)_task-([^_]+)(?:_run-(\d+))?_space-([^_]+)_hemi-L_desc-([^_.]+)\.func\.gii$")
_AUDIO = re.compile(r"^(?:.*/)?(.+?)(?:_audio)?\.wav$")

ScanKey = tuple[str, str, int]  # (subject, task, run)


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


# ----------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Row:
    """One row of an ``events.tsv``: seconds from the scan's first TR, and the wav it plays."""

    onset: float
    duration: float
    trial_type: str
    stem: str | None  # the wav's stem (``pieman`` for ``pieman_audio.wav``); None: no audio (a movie)

    @property
    def end(self) -> float:
        return self.onset + self.duration


@dataclass(frozen=True)
class Segment:
    """The part of one scan that goes with one story (one wav).

    ``zero`` is the scan time (s) of the wav's start, the onset of its first row;
    ``start:stop`` the scan's TRs kept for it; ``story_rows`` the (onset, end) scan times
    of its ``story`` rows.
    """

    stem: str
    zero: float
    start: int
    stop: int
    story_rows: tuple[tuple[float, float], ...]

    def tr_times(self, tr: float = TR) -> np.ndarray:
        """Seconds from the wav's start of the kept TRs."""
        return np.arange(self.start, self.stop) * tr - self.zero


def _stem(stim_file: str, where: str) -> str | None:
    s = (stim_file or "").strip()
    if s in ("", "n/a"):
        return None
    m = _AUDIO.match(s)
    if not m:
        raise ValidationError(f"{where}: stim_file {stim_file!r} is not a .wav file")
    return m.group(1)


def _number(value: Any, column: str, i: int, where: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{where}: row {i + 1}: {column} {value!r} is not a number") from None
    if not math.isfinite(x):
        raise ValidationError(f"{where}: row {i + 1}: {column} {value!r} is not finite")
    return x


def parse_events(records: Iterable[Mapping[str, Any]], task: str, where: str = "events.tsv") -> list[Row]:
    """Rows of an events table (dicts with ``onset``, ``duration``, ``trial_type``, ``stim_file``).

    Without a ``stim_file`` column every row plays the task's own story (stem = ``task``).
    """
    records = list(records)
    if not records:
        raise ValidationError(f"{where}: no rows")
    need = {"onset", "duration"} - set(records[0])
    if need:
        raise ValidationError(f"{where}: needs columns 'onset' and 'duration' (missing {sorted(need)})")
    has_stim = "stim_file" in records[0]
    rows = []
    for i, r in enumerate(records):
        onset, dur = _number(r["onset"], "onset", i, where), _number(r["duration"], "duration", i, where)
        if dur < 0:
            raise ValidationError(f"{where}: row {i + 1}: duration {dur} is negative")
        kind = str(r.get("trial_type") or "story").strip()
        stem = _stem(r.get("stim_file"), where) if has_stim else task
        if kind == "story" and stem is None:
            raise ValidationError(f"{where}: row {i + 1} is a story row with no stim_file (which wav?)")
        rows.append(Row(onset, dur, kind, stem))
    if not any(r.trial_type == "story" for r in rows):
        raise ValidationError(f"{where}: no 'story' row (trial types: {sorted({r.trial_type for r in rows})})")
    return rows


def read_events(path: str | os.PathLike, task: str) -> list[Row]:
    """The rows of one scan's ``events.tsv`` (see :func:`parse_events`)."""
    p = check_data_file(path, what="events file")
    with open(p, newline="") as f:
        return parse_events(csv.DictReader(f, delimiter="\t"), task, where=str(p))


def _check_own_rows(own: list[Row], where: str) -> None:
    """Warn when rows of one wav overlap: they cannot all be right about where the wav is."""
    own = sorted(own, key=lambda r: r.onset)
    for a, b in zip(own, own[1:]):
        if b.onset < a.end - 1e-6:
            log.warning("narratives: %s: the %s row of %s at %.2f s starts before its %s row (%.2f-%.2f s) ends; "
                        "time zero is taken from the first row (%.2f s)", where, b.trial_type, b.stem, b.onset,
                        a.trial_type, a.onset, a.end, own[0].onset)


def story_segments(rows: Sequence[Row], n_trs: int | None = None, tr: float = TR, lag: float = HRF_LAG,
                   where: str = "events.tsv") -> list[Segment]:
    """One :class:`Segment` per wav that a ``story`` row of this scan plays, in order of onset.

    ``n_trs`` (the scan's length; None: unknown) stops the last segment at the scan's end.
    """
    stems = list(dict.fromkeys(r.stem for r in sorted(rows, key=lambda r: r.onset)
                               if r.trial_type == "story" and r.stem))
    out = []
    for stem in stems:
        own = [r for r in rows if r.stem == stem]
        other = [r for r in rows if r.stem != stem]
        _check_own_rows(own, where)
        zero, last = min(r.onset for r in own), max(r.end for r in own)
        inside = [r for r in other if r.onset < last - _EPS and r.end > zero + _EPS]
        if inside:
            raise ValidationError(f"{where}: a {inside[0].trial_type} row at {inside[0].onset} s lies between the "
                                  f"first ({zero} s) and last row of {stem}; cannot cut its TRs")
        t0 = max([r.end for r in other if r.end <= zero + _EPS], default=0.0)
        t1 = min([r.onset for r in other if r.onset >= last - _EPS] + [last + lag])
        if n_trs is not None:
            t1 = min(t1, n_trs * tr)
        start, stop = math.ceil(t0 / tr - _EPS), math.ceil(t1 / tr - _EPS)
        if stop - start < 2:
            raise ValidationError(f"{where}: {stem} (from {zero} s) has fewer than 2 TRs in the scan"
                                  + (f" ({n_trs} TRs)" if n_trs is not None else ""))
        story_rows = tuple((r.onset, r.end) for r in own if r.trial_type == "story")
        out.append(Segment(stem, zero, start, stop, story_rows))
    return out


# ------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Presentation:
    """One scan's TRs ``start:stop`` of one story (a :class:`Segment` cut to the story's grid)."""

    scan: ScanKey
    segment: Segment
    start: int
    stop: int


@dataclass
class Plan:
    """Which story each scan gives: story name -> wav stem and TR times; (subject, story) -> presentations."""

    stems: dict[str, str] = field(default_factory=dict)
    tr_times: dict[str, np.ndarray] = field(default_factory=dict)
    presentations: dict[tuple[str, str], list[Presentation]] = field(default_factory=dict)

    def names_of(self, stem_or_name: str) -> list[str]:
        """Stories that are ``stem_or_name`` or play the wav of that stem."""
        return [n for n, s in self.stems.items() if stem_or_name in (n, s)]


def _story_name(stem: str, zero: float, tr: float) -> str:
    """``stem`` on the grid of whole TRs from the wav's start, else ``stem@<zero mod tr>``."""
    phase = zero % tr
    if phase < _EPS or phase > tr - _EPS:
        return stem
    return f"{stem}@{round(phase, 6):g}"


def _grid(name: str, group: list[tuple[ScanKey, Segment]], tr: float) -> tuple[np.ndarray, list[Presentation]]:
    """The TRs all of ``group``'s scans cover, on the first one's grid; each scan cut to them."""
    ref = group[0][1]
    shifts = []
    for key, seg in group:
        d = (seg.zero - ref.zero) / tr
        if abs(d - round(d)) * tr > _EPS:
            raise ValidationError(f"narratives: {name}: onsets {ref.zero} and {seg.zero} s ({key}) are not whole "
                                  f"TRs apart")
        shifts.append(int(round(d)))
    j0 = max(seg.start - m for (_, seg), m in zip(group, shifts))
    j1 = min(seg.stop - m for (_, seg), m in zip(group, shifts))
    if j1 - j0 < 2:
        raise ValidationError(f"narratives: the scans of story {name!r} share fewer than 2 TRs")
    parts = [Presentation(key, seg, j0 + m, j1 + m) for (key, seg), m in zip(group, shifts)]
    return np.arange(j0, j1) * tr - ref.zero, parts


def plan(segments: Mapping[ScanKey, Sequence[Segment]], tr: float = TR) -> Plan:
    """Stories, their TR grids and each subject's presentations, from every scan's segments.

    A story is a wav on one TR grid (:func:`_story_name`). A subject's several
    presentations of one story are its repeats; scans of different wavs never are.
    """
    groups: dict[str, list[tuple[ScanKey, Segment]]] = {}
    for key in sorted(segments):
        for seg in segments[key]:
            groups.setdefault(_story_name(seg.stem, seg.zero, tr), []).append((key, seg))
    out = Plan()
    for name in sorted(groups):
        out.stems[name] = groups[name][0][1].stem
        out.tr_times[name], parts = _grid(name, groups[name], tr)
        for p in parts:
            out.presentations.setdefault((p.scan[0], name), []).append(p)
    heard: dict[tuple[str, str], list[str]] = {}
    for subj, name in out.presentations:
        heard.setdefault((subj, out.stems[name]), []).append(name)
    for (subj, stem), names in heard.items():
        if len(names) > 1:
            log.warning("narratives: %s heard %s on %d TR grids (%s): kept as separate stories, not repeats",
                        subj, stem, len(names), ", ".join(names))
    return out


def _exclusions(root: Path) -> list[str]:
    """Scan names listed in ``code/scan_exclude.json`` (``{task: {subject: [scan, ...]}}`` or flatter)."""
    p = root / "code" / "scan_exclude.json"
    if not p.exists() or is_annex_pointer(p):
        return []
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{p}: not valid JSON ({exc})") from exc

    def flat(x: Any) -> list[str]:
        if isinstance(x, dict):
            return [y for v in x.values() for y in flat(v)]
        if isinstance(x, (list, tuple)):
            return [y for v in x for y in flat(v)]
        return [str(x)]

    return flat(raw)


def _excluded(filename: str, excl: Sequence[str]) -> bool:
    """``sub-001_task-pieman`` excludes that task's runs, not ``sub-001_task-piemanpni``."""
    return any(filename == e or filename.startswith(e + "_") for e in excl)


# ------------------------------------------------------------------------------- load
def _scans(root: Path, smooth: bool, space: str) -> dict[ScanKey, tuple[Path, Path]]:
    pipe, desc = _pipeline(smooth)
    base = root / "derivatives" / pipe
    if not base.is_dir():
        raise DataNotFoundError(f"{base} does not exist. Get the data with `{_INSTALL}` then `{get_command(root, smooth=smooth)}`")
    out: dict[ScanKey, tuple[Path, Path]] = {}
    for left in sorted(base.glob(f"sub-*/func/*_space-{space}_hemi-L_desc-{desc}.func.gii")):
        m = _SCAN.match(left.name)
        if not m:
            continue
        subj, task, run = m.group(1), m.group(2), int(m.group(3) or 1)
        right = left.with_name(left.name.replace("_hemi-L_", "_hemi-R_"))
        out[(subj, task, run)] = (left, right)
    return out


def _events_path(root: Path, left: Path) -> Path:
    return root / left.name.split("_")[0] / "func" / f"{left.name.split('_space-')[0]}_events.tsv"


def _select(scans: Mapping[ScanKey, tuple[Path, Path]], subjects: Sequence[str] | None,
            tasks: Sequence[str] | None, excl: Sequence[str]) -> dict[ScanKey, tuple[Path, Path]]:
    kept = {}
    for key, (left, right) in scans.items():
        if (subjects is not None and key[0] not in subjects) or (tasks is not None and key[1] not in tasks):
            continue
        if _excluded(left.name, excl):
            log.info("narratives: %s excluded by code/scan_exclude.json", left.name)
            continue
        kept[key] = (left, right)
    return kept


def _read_scan(root: Path, key: ScanKey, left: Path, right: Path, smooth: bool, tr: float,
               lag: float) -> tuple[list[Segment], tuple[int, int]]:
    """The scan's story segments and its vertex counts (GIfTI headers only)."""
    for p in (left, right):
        check_data_file(p, what="GIfTI file", hint=f"Get it with `{get_command(root, [key[0]], smooth)}`")
    nl_t, nl = _gifti_header(left)
    nr_t, nr = _gifti_header(right)
    if nl_t != nr_t:
        raise ValidationError(f"{right}: has {nr_t} TRs but {left} has {nl_t}")
    events = _events_path(root, left)
    return story_segments(read_events(events, key[1]), nl_t, tr, lag, where=str(events)), (nl, nr)


def _keep_stories(segments: Mapping[ScanKey, list[Segment]], stories: Sequence[str] | None,
                  tr: float) -> dict[ScanKey, list[Segment]]:
    """The segments of the ``stories`` asked for (wav stems or story names)."""
    if stories is None:
        return dict(segments)
    want = set(stories)
    out = {k: [s for s in segs if want & {s.stem, _story_name(s.stem, s.zero, tr)}] for k, segs in segments.items()}
    found = {n for segs in out.values() for s in segs for n in (s.stem, _story_name(s.stem, s.zero, tr))}
    absent = sorted(want - found)
    if absent:
        played = sorted({s.stem for segs in segments.values() for s in segs})
        raise ValidationError(f"narratives: stories {absent} are played in none of the selected scans; "
                              f"they play {played}")
    return {k: v for k, v in out.items() if v}


def _transcript_paths(root: Path, stems: Iterable[str]) -> dict[str, Path]:
    """``stimuli/gentle/<stem>/align.json`` of each stem; every missing one named in one error."""
    paths = {s: root / "stimuli" / "gentle" / s / "align.json" for s in sorted(set(stems))}
    missing = {s: p for s, p in paths.items() if not p.exists() and not is_annex_pointer(p)}
    if missing:
        raise DataNotFoundError(
            f"narratives: no transcript for stories {sorted(missing)}: "
            + "; ".join(f"{p} does not exist" for p in missing.values())
            + f". Get them with `cd {root} && datalad get stimuli/gentle`, or leave those stories out "
              f"(stories=, tasks=)")
    return paths


def _words_outside(story: Story, segment: Segment, tol: float = 1.0) -> int:
    """Words (midpoints) more than ``tol`` s outside the story rows of ``segment``."""
    t = story.word_times
    inside = np.zeros(t.shape, bool)
    for a, b in segment.story_rows:
        inside |= (t >= a - segment.zero - tol) & (t <= b - segment.zero + tol)
    return int((~inside).sum())


def _stories(root: Path, pl: Plan, not_found: str, tr: float) -> list[Story]:
    paths = _transcript_paths(root, pl.stems.values())
    words = {s: read_gentle(p, not_found=not_found) for s, p in paths.items()}
    out = []
    for name, stem in pl.stems.items():
        st = Story(name, *words[stem], tr, pl.tr_times[name], source=str(paths[stem]))
        seg = next(ps[0].segment for (_, n), ps in pl.presentations.items() if n == name)
        n_out = _words_outside(st, seg)
        if n_out:
            log.warning("narratives: %d of %d words of %s (%s) fall outside its story rows (%s)", n_out,
                        st.n_words, name, paths[stem], ", ".join(f"{a:g}-{b:g} s" for a, b in seg.story_rows))
        out.append(st)
    return out


def _presentation_loader(kept: Mapping[ScanKey, tuple[Path, Path]], p: Presentation):
    left, right = kept[p.scan]
    return lambda: np.hstack([_read_gifti(left)[p.start:p.stop], _read_gifti(right)[p.start:p.stop]])


def _responses(pl: Plan, kept: Mapping[ScanKey, tuple[Path, Path]]) -> tuple[dict, dict, dict]:
    """Loaders, sources and repeats of every (subject, story)."""
    loaders, sources, repeats = {}, {}, {}
    for key, parts in pl.presentations.items():
        one = [_presentation_loader(kept, p) for p in parts]
        sources[key] = ", ".join(f"{kept[p.scan][0]} (TRs {p.start}-{p.stop - 1})" for p in parts)
        if len(one) == 1:
            loaders[key] = one[0]
            continue
        repeats[key] = lambda one=one: np.stack([f() for f in one])
        loaders[key] = lambda one=one: zscore(np.mean(np.stack([f() for f in one]), axis=0)).astype(np.float32)
    return loaders, sources, repeats


def _spaces(pl: Plan, kept: Mapping[ScanKey, tuple[Path, Path]], sizes: Mapping[ScanKey, tuple[int, int]],
            space: str) -> dict[str, Space]:
    """Each subject's surface; every hemisphere of every scan must match it."""
    spaces: dict[str, Space] = {}
    for subj in sorted({k[0] for k in pl.presentations}):
        scans = sorted({p.scan for (s, _), ps in pl.presentations.items() if s == subj for p in ps})
        sp_ = Space.fsaverage(space) if space in FSAVERAGE_SIZES else Space(space, "surface", sizes[scans[0]])
        for k in scans:
            sp_.check_hemispheres(sizes[k], [str(p) for p in kept[k]])
        spaces[subj] = sp_
    return spaces


def _test_names(pl: Plan, test_stories: Sequence[str]) -> list[str]:
    """Story names of ``test_stories`` (stems or names)."""
    names, bad = [], []
    for t in test_stories:
        found = pl.names_of(t)
        names += [n for n in found if n not in names]
        if not found:
            bad.append(t)
    if bad:
        raise ValidationError(f"narratives: test_stories {bad} are not among the loaded stories {sorted(pl.stems)}")
    return names


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
    stories: Sequence[str] | None = None,
    lag: float = HRF_LAG,
) -> Dataset:
    """Load Narratives surface data from ``root``.

    Parameters
    ----------
    root : path
        The ds002345 folder.
    subjects : sequence of str, optional
        BIDS labels with ``sub-`` (default: all with surface data).
    tasks : sequence of str, optional
        Tasks (scans' ``task-`` labels) to read (default: all found).
    smooth : bool
        ``afni-smooth`` (``desc-sm6``) or ``afni-nosmooth`` (``desc-clean``) data.
    space : str
        Surface named in the file names (``fsaverage6``).
    not_found : {"interpolate", "drop"}
        What to do with Gentle's ``not-found-in-audio`` words (see :func:`read_gentle`).
    exclude : bool
        Leave out the scans listed in ``code/scan_exclude.json``.
    test_stories : sequence of str
        Held-out stories (wav stems such as ``"milkywayvodka"``, or story names); the
        others are training stories.
    tr : float
        Repetition time (1.5 s).
    stories : sequence of str, optional
        Stories to load, by wav stem (``"milkywayvodka"``, ``"shame"``) or story name
        (default: every story the selected scans play).
    lag : float
        Seconds of TRs kept past a story's last row (:data:`HRF_LAG`).
    """
    if root is None:
        raise ValidationError("narratives: root= (the ds002345 folder) is required")
    root = Path(root).expanduser()
    scans = _scans(root, smooth, space)
    excl = _exclusions(root) if exclude else []
    kept = _select(scans, subjects, tasks, excl)
    if subjects is not None:
        absent = [s for s in subjects if s not in {k[0] for k in scans}]
        if absent:
            raise DataNotFoundError(f"narratives: no {space} surface data for {absent} under {root}; get it with `{get_command(root, absent, smooth)}`")
    if not kept:
        raise DataNotFoundError(f"narratives: no scans under {root} match (subjects={subjects}, tasks={tasks}, space={space})")
    read = {key: _read_scan(root, key, *files, smooth, tr, lag) for key, files in kept.items()}
    segments = _keep_stories({k: v[0] for k, v in read.items()}, stories, tr)
    pl = plan(segments, tr)
    story_objs = _stories(root, pl, not_found, tr)
    loaders, sources, repeats = _responses(pl, kept)
    spaces = _spaces(pl, kept, {k: v[1] for k, v in read.items()}, space)
    tests = _test_names(pl, test_stories)
    n_trs = {s.name: s.n_trs for s in story_objs}
    info = {"root": str(root), "smooth": smooth, "space": space, "tr": tr, "lag": lag, "excluded": excl,
            "audio": dict(pl.stems),
            "scans": {f"{s}/{n}": [kept[p.scan][0].name.split("_space-")[0] for p in ps]
                      for (s, n), ps in pl.presentations.items()}}
    return Dataset("narratives", story_objs, sorted(spaces), spaces, Responses(loaders, sources, n_trs),
                   [s for s in n_trs if s not in tests], tests, repeats=repeats, info=info)


def _check_segments(root: Path, left: Path, key: ScanKey, tr: float, lag: float) -> list[Segment]:
    """A scan's segments, its length read from the GIfTI header where it is on disk."""
    n = _gifti_header(left)[0] if left.exists() and not is_annex_pointer(left) else None
    events = _events_path(root, left)
    return story_segments(read_events(events, key[1]), n, tr, lag, where=str(events))


def _report(pl: Plan, names: Mapping[ScanKey, str]) -> dict[str, list[dict[str, Any]]]:
    """subject -> what it will load: story, wav, scan, from which second, which TRs."""
    out: dict[str, list[dict[str, Any]]] = {}
    for (subj, name), parts in sorted(pl.presentations.items()):
        for i, p in enumerate(parts):
            out.setdefault(subj, []).append({
                "story": name, "audio": f"{p.segment.stem}_audio.wav", "scan": names[p.scan],
                "zero": p.segment.zero, "story_onsets": [a for a, _ in p.segment.story_rows],
                "trs": [p.start, p.stop], "presentation": [i + 1, len(parts)]})
    return {s: sorted(v, key=lambda it: (it["scan"], it["zero"])) for s, v in out.items()}


def check(root: str | os.PathLike, subjects: Sequence[str] | None = None, smooth: bool = True,
          space: str = "fsaverage6", tasks: Sequence[str] | None = None, stories: Sequence[str] | None = None,
          exclude: bool = True, tr: float = TR, lag: float = HRF_LAG) -> dict[str, Any]:
    """Present / missing / not-downloaded files, and which stories each subject will load.

    Returns a dict with ``present`` / ``missing`` / ``not_downloaded`` (paths relative
    to ``root``), ``stories`` (subject -> one dict per presentation: ``story``,
    ``audio``, ``scan``, ``zero`` (the scan second the wav starts at), ``story_onsets``,
    ``trs`` (the scan's TRs ``[start, stop)``), ``presentation`` (i of n)),
    ``missing_transcripts`` (stems), ``excluded`` (scans), ``problems`` (events that
    cannot be read), ``ok`` and ``command``.
    """
    root = Path(root).expanduser()
    present, missing, pointers, problems, excluded = [], [], [], [], []

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
    excl = _exclusions(root) if exclude else []
    segments: dict[ScanKey, list[Segment]] = {}
    names: dict[ScanKey, str] = {}
    for left in lefts:
        m = _SCAN.match(left.name)
        if not m or (tasks is not None and m.group(2) not in tasks):
            continue
        key = (m.group(1), m.group(2), int(m.group(3) or 1))
        names[key] = left.name.split("_space-")[0]
        look(left)
        look(left.with_name(left.name.replace("_hemi-L_", "_hemi-R_")))
        look(_events_path(root, left))
        if _excluded(left.name, excl):
            excluded.append(names[key])
        elif _events_path(root, left).exists():
            try:
                segments[key] = _check_segments(root, left, key, tr, lag)
            except (ValidationError, DataNotFoundError) as exc:
                problems.append(str(exc))
    try:
        pl = plan(_keep_stories(segments, stories, tr), tr)
    except ValidationError as exc:
        problems.append(str(exc))
        pl = Plan()
    no_text = []
    for stem in sorted(set(pl.stems.values())):
        p = root / "stimuli" / "gentle" / stem / "align.json"
        look(p)
        if not p.exists() and not is_annex_pointer(p):
            no_text.append(stem)
    cmd = get_command(root, subjects or sorted({p.name.split("_")[0] for p in lefts}) or None, smooth)
    return {"present": present, "missing": missing, "not_downloaded": pointers, "problems": problems,
            "stories": _report(pl, names), "missing_transcripts": no_text, "excluded": excluded,
            "ok": not missing and not pointers and not problems, "command": cmd}


# ------------------------------------------------------------------------------ write
def _events_text(st: Story) -> str:
    """One story row from the wav's start to the end of the story's last TR."""
    onset = -float(st.tr_times[0])
    return (f"onset\tduration\ttrial_type\tstim_file\n"
            f"{onset!r}\t{float(st.tr_times[-1]) + st.tr!r}\tstory\t{st.name}_audio.wav\n")


def write(dataset: Dataset, root: str | os.PathLike, smooth: bool = True) -> Path:
    """Write ``dataset`` (surface responses) in the Narratives layout.

    Each story must be on a uniform grid ``arange(n) * tr - onset`` (``simulate(grid=
    "narratives")``); ``events.tsv`` gets one ``story`` row playing ``<story>_audio.wav``
    from ``onset = -tr_times[0]`` to the end of the story's last TR, so that
    :func:`load` reads back every TR. A story with
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
                atomic(root / label / "func" / f"{stem}_events.tsv", lambda t, st=st: t.write_text(_events_text(st)))
                nl = sp_.hemi_sizes[0]
                for hemi, block in (("L", data[:, :nl]), ("R", data[:, nl:])):
                    img = nib.GiftiImage(darrays=[nib.gifti.GiftiDataArray(np.ascontiguousarray(row, dtype=np.float32))
                                                  for row in block])
                    fn = root / "derivatives" / pipe / label / "func" / f"{stem}_space-{sp_.name}_hemi-{hemi}_desc-{desc}.func.gii"
                    atomic(fn, lambda t, img=img: nib.save(img, str(t)))
    return root
