"""A user's own data, described by a YAML manifest ("manifest").

Example (paths are relative to the YAML file)::

    name: mystudy
    tr: 2.0
    onset: 10.0            # sound onset, seconds after the start of the first response row
    tr_reference: middle   # row times are TR midpoints ("middle") or starts ("start")
    space: fsaverage5      # or {volume: mask.nii.gz}, or {targets: 5000}
    stories:
      storya: {transcript: text/storya.TextGrid}
      storyb: {transcript: text/storyb.csv, onset: 8.0}   # CSV columns: word,onset,offset
    subjects:
      sub01:
        storya: resp/sub01_storya.npy                     # .npy, .hf5 (dataset "data")
        storyb: [resp/sub01_b_L.func.gii, resp/sub01_b_R.func.gii]   # or .nii.gz + volume mask
    test: [storyb]         # the rest are training stories (or list them under train:)
    repeats:               # optional: single presentations of a test story, for noise ceilings
      sub01:
        storyb: [resp/sub01_b_rep1.npy, resp/sub01_b_rep2.npy]   # one repeat per file (>= 2)

Row ``k`` of a story's responses is at ``k * tr - onset`` seconds from sound onset
(``+ tr / 2`` with ``tr_reference: middle``). The manifest is validated by pydantic;
errors give the YAML file and line. Response files are not read at load time (only
their headers, for the row count).

``repeats`` lists, per subject and story, files of single presentations (each one
repeat, in any response format above, with the story's rows and the subject's targets);
a subject's noise ceiling (CCmax) is computed from the repeats of its test stories.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
from pydantic import Field, PositiveFloat, field_validator

from .._yaml import StrictModel, line_of, read_yaml_model
from ..errors import DataNotFoundError, ValidationError, check_data_file
from ..stimulus import FSAVERAGE_SIZES, Responses, Space, Story
from .base import Dataset

__all__ = ["load", "check", "Manifest"]


class StorySpec(StrictModel):
    transcript: str
    onset: float | None = None
    word_tier: str | int | None = None


class VolumeSpace(StrictModel):
    volume: str


class TargetsSpace(StrictModel):
    targets: int = Field(gt=0)


class Manifest(StrictModel):
    name: str = "manifest"
    tr: PositiveFloat
    onset: float = 0.0
    tr_reference: Literal["start", "middle"] = "start"
    space: Union[str, VolumeSpace, TargetsSpace]
    stories: dict[str, StorySpec]
    subjects: dict[str, dict[str, Union[str, list[str]]]]
    test: list[str] = []
    train: list[str] | None = None
    #: subject -> story -> repeat files (each file one repeat; a .func.gii pair is one item)
    repeats: dict[str, dict[str, list[Union[str, list[str]]]]] = Field(default_factory=dict)

    @field_validator("space")
    @classmethod
    def _known_surface(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in FSAVERAGE_SIZES:
            raise ValueError(f"unknown surface {v!r}; use one of {', '.join(FSAVERAGE_SIZES)}, {{volume: mask}} or {{targets: N}}")
        return v

    @field_validator("stories", "subjects")
    @classmethod
    def _not_empty(cls, v: dict) -> dict:
        if not v:
            raise ValueError("must not be empty")
        return v


def _parse(path: Path) -> tuple[Manifest, Any]:
    m, node, _ = read_yaml_model(path, Manifest, "manifest")
    return m, node


def _read_csv_words(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    p = check_data_file(path, what="transcript")
    with open(p, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"word", "onset", "offset"} <= set(rows[0]):
        raise ValidationError(f"{p}: a CSV transcript needs columns word,onset,offset")
    try:
        return [r["word"] for r in rows], np.array([float(r["onset"]) for r in rows]), np.array([float(r["offset"]) for r in rows])
    except ValueError as exc:
        raise ValidationError(f"{p}: onset/offset must be numbers ({exc})") from exc


def _npy_shape(path: Path) -> tuple[int, ...]:
    """Shape of a ``.npy`` file from its header, refusing files that hold Python objects.

    Raises
    ------
    ValidationError
        ``path`` is not a ``.npy`` file, or its array has an object dtype (pickled
        Python objects, which brainalign never unpickles).
    """
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except ValueError as exc:
        raise ValidationError(f"{path}: not a readable .npy file ({exc})") from exc
    if dtype.hasobject:
        raise ValidationError(
            f"{path}: holds Python objects (dtype {dtype}, shape {shape}), not numbers; brainalign never "
            "unpickles data files. Save the responses as one numeric array (TRs x targets) instead: "
            "np.save(path, np.asarray(data, dtype=np.float32), allow_pickle=False)"
        )
    return tuple(int(n) for n in shape)


class _File:
    """One response source: header (rows, targets) without reading, and the data."""

    def __init__(self, spec: str | list[str], base: Path, mask: np.ndarray | None, where: str,
                 space: Space | None = None):
        self.paths = [base / s for s in ([spec] if isinstance(spec, str) else spec)]
        self.mask, self.where = mask, where
        first = self.paths[0].name
        if first.endswith(".func.gii"):
            if len(self.paths) != 2:
                raise ValidationError(f"{where}: GIfTI responses need two files [left, right], got {len(self.paths)}")
            self.kind = "gii"
        elif len(self.paths) != 1:
            raise ValidationError(f"{where}: give one response file (or [left, right] .func.gii)")
        elif first.endswith(".npy"):
            self.kind = "npy"
        elif first.endswith((".hf5", ".h5", ".hdf5")):
            self.kind = "hf5"
        elif first.endswith((".nii", ".nii.gz")):
            if mask is None:
                raise ValidationError(f"{where}: NIfTI responses need a volume space with a mask (space: {{volume: mask.nii.gz}})")
            self.kind = "nii"
        else:
            raise ValidationError(f"{where}: {first}: unsupported response format (.npy, .hf5, .func.gii pair, .nii.gz)")
        for p in self.paths:
            check_data_file(p, what="response file")
        if self.kind == "gii":
            from .narratives import _gifti_header

            (n_left, v_left), (n_right, v_right) = (_gifti_header(p) for p in self.paths)
            if n_left != n_right:
                raise ValidationError(f"{self.paths[1]}: has {n_right} TRs but {self.paths[0]} has {n_left}")
            if space is not None:
                space.check_hemispheres((v_left, v_right), [str(p) for p in self.paths])
            self._gii_rows = n_left

    @property
    def source(self) -> str:
        return ", ".join(str(p) for p in self.paths)

    def n_rows(self) -> int:
        p = self.paths[0]
        if self.kind == "npy":
            shape = _npy_shape(p)
            if not shape:
                raise ValidationError(f"{p}: holds a single number; responses must be 2-D (TRs x targets)")
            return shape[0]
        if self.kind == "hf5":
            import h5py

            with h5py.File(p, "r") as f:
                return int(f[self._key(f, p)].shape[0])
        if self.kind == "gii":
            return self._gii_rows
        import nibabel as nib

        shape = nib.load(str(p)).shape
        if len(shape) != 4:
            raise ValidationError(f"{p}: NIfTI responses must be 4-D (x, y, z, time), got shape {shape}")
        return int(shape[3])

    @staticmethod
    def _key(f, p) -> str:
        if "data" in f:
            return "data"
        keys = list(f.keys())
        if len(keys) != 1:
            raise ValidationError(f"{p}: has no dataset 'data' and {len(keys)} others ({keys}); name it 'data'")
        return keys[0]

    def read(self) -> np.ndarray:
        p = self.paths[0]
        if self.kind == "npy":
            _npy_shape(p)
            return np.load(p, allow_pickle=False)
        if self.kind == "hf5":
            import h5py

            with h5py.File(p, "r") as f:
                return np.asarray(f[self._key(f, p)][...])
        if self.kind == "gii":
            from .narratives import _read_gifti

            return np.hstack([_read_gifti(q) for q in self.paths])
        import nibabel as nib

        img = nib.load(str(p))
        if img.shape[:3] != self.mask.shape:
            raise ValidationError(f"{p}: volume shape {img.shape[:3]} differs from the mask's {self.mask.shape}")
        return np.asarray(img.dataobj, dtype=np.float32)[self.mask].T


def load(root: str | os.PathLike | None, subjects: list[str] | None = None) -> Dataset:
    """Load the dataset described by the YAML manifest ``root``."""
    if root is None:
        raise ValidationError("manifest: root= must be the path of the YAML manifest")
    path = Path(root).expanduser()
    if path.is_dir():
        raise ValidationError(f"manifest: {path} is a folder; give the YAML file itself")
    m, node = _parse(path)
    base = path.parent

    def where(*loc: Any) -> str:
        return f"{path}, line {line_of(node, loc)}"

    mask = None
    if isinstance(m.space, str):
        space = Space.fsaverage(m.space)
    elif isinstance(m.space, TargetsSpace):
        n = m.space.targets
        space = Space.volume(f"{m.name}-targets", np.ones((n, 1, 1), dtype=bool))
    else:
        import nibabel as nib

        mp = check_data_file(base / m.space.volume, what="mask")
        mask = np.asarray(nib.load(str(mp)).dataobj) > 0
        space = Space.volume(m.name, mask, affine=nib.load(str(mp)).affine)

    selected = list(m.subjects) if subjects is None else list(subjects)
    unknown = [s for s in selected if s not in m.subjects]
    if unknown:
        raise ValidationError(f"{path}: subjects {unknown} are not in the manifest ({', '.join(m.subjects)})")
    files: dict[tuple[str, str], _File] = {}
    for subj in selected:
        for story, spec in m.subjects[subj].items():
            if story not in m.stories:
                raise ValidationError(f"{where('subjects', subj, story)}: story {story!r} is not listed under stories:")
            files[(subj, story)] = _File(spec, base, mask, where("subjects", subj, story), space)
    story_objs: list[Story] = []
    for name, spec in m.stories.items():
        have = [f for (s, st), f in files.items() if st == name]
        if not have:
            continue
        rows = {f.source: f.n_rows() for f in have}
        if len(set(rows.values())) > 1:
            raise ValidationError(f"{where('stories', name)}: response files of story {name!r} differ in rows: {rows}")
        n = next(iter(rows.values()))
        onset = m.onset if spec.onset is None else spec.onset
        tr_times = np.arange(n) * m.tr - onset + (m.tr / 2 if m.tr_reference == "middle" else 0.0)
        tp = base / spec.transcript
        if tp.suffix.lower() == ".csv":
            w, on, off = _read_csv_words(tp)
            story_objs.append(Story(name, w, on, off, m.tr, tr_times, source=str(tp)))
        elif tp.suffix.lower() == ".textgrid":
            from ..transcripts import story_from_textgrid

            story_objs.append(story_from_textgrid(tp, m.tr, tr_times, name=name, word_tier=spec.word_tier))
        else:
            raise ValidationError(f"{where('stories', name, 'transcript')}: {tp.name}: transcripts must be .TextGrid or .csv")
    names = [s.name for s in story_objs]
    for key in ("test", "train"):
        bad = [s for s in (getattr(m, key) or []) if s not in m.stories]
        if bad:
            raise ValidationError(f"{where(key)}: {key} names stories {bad} that are not listed under stories:")
    test = [s for s in m.test if s in names]
    train = [s for s in (m.train if m.train is not None else names) if s in names and s not in test]
    responses = Responses({k: f.read for k, f in files.items()}, {k: f.source for k, f in files.items()},
                          {s.name: s.n_trs for s in story_objs})
    n_trs = {st.name: st.n_trs for st in story_objs}
    repeats = _repeats(m, base, mask, space, selected, files, n_trs, where)
    info: dict[str, Any] = {"root": str(path), "tr": m.tr}
    if m.repeats:
        info["ceiling"] = f"from the repeats listed in {path}"
    return Dataset(m.name, story_objs, selected, space, responses, train, test, repeats=repeats, info=info)


def _repeats(m: Manifest, base: Path, mask, space: Space, selected: list[str], files: dict, n_trs: dict[str, int],
             where) -> dict[tuple[str, str], Any]:
    """Loaders of the repeats the manifest lists (rows checked from the headers)."""
    out: dict[tuple[str, str], Any] = {}
    for subj, stories in m.repeats.items():
        if subj not in m.subjects:
            raise ValidationError(f"{where('repeats', subj)}: subject {subj!r} is not listed under subjects:")
        if subj not in selected:
            continue
        for story, specs in stories.items():
            if (subj, story) not in files:
                raise ValidationError(f"{where('repeats', subj, story)}: {subj} has no responses for story {story!r}")
            if len(specs) < 2:
                raise ValidationError(f"{where('repeats', subj, story)}: {len(specs)} repeat file(s); a noise ceiling "
                                      "needs at least 2")
            reps = [_File(spec, base, mask, where("repeats", subj, story, i), space) for i, spec in enumerate(specs)]
            for f in reps:
                if f.n_rows() != n_trs[story]:
                    raise ValidationError(f"{f.source}: repeat of {story!r} has {f.n_rows()} rows but the story's "
                                          f"responses have {n_trs[story]}")

            def load(reps=tuple(reps)) -> np.ndarray:
                arrs = [np.asarray(f.read(), dtype=np.float32) for f in reps]
                bad = [f.source for f, a in zip(reps, arrs) if a.ndim != 2 or a.shape[1] != space.n_targets]
                if bad:
                    raise ValidationError(f"{bad[0]}: a repeat must be (TRs x {space.n_targets} targets) like the "
                                          "responses")
                return np.stack(arrs)

            out[(subj, story)] = load
    return out


def check(root: str | os.PathLike, subjects: list[str] | None = None) -> dict[str, Any]:
    """Validate the manifest and every file it names (headers only)."""
    try:
        ds = load(root, subjects=subjects)
    except (ValidationError, DataNotFoundError) as exc:
        return {"present": [], "missing": [], "not_downloaded": [], "ok": False, "problems": [str(exc)], "command": ""}
    n = sum(len(ds.stories_of(s)) for s in ds.subjects)
    return {"present": [f"{n} response files, {len(ds.stories)} transcripts"], "missing": [], "not_downloaded": [],
            "ok": True, "command": ""}
