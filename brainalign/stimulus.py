"""The data model: what a story is, what a subject's responses are, where targets live.

Every dataset adapter returns these objects, and every later stage reads only these.
They validate themselves at construction so that bad input fails where it enters.

* :class:`Story` -- the words of one story with their times (seconds from sound onset)
  and the times of the fMRI rows (TRs) that go with it.
* :class:`Responses` -- subject x story -> float32 array (TRs x targets), read lazily
  from whatever file holds it, validated when read.
* :class:`Space` -- where the targets are: an fsaverage surface (vertices per hemisphere)
  or a subject's volume (a boolean mask).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ValidationError

__all__ = ["Word", "Story", "Responses", "Space", "FSAVERAGE_SIZES"]

#: vertices per hemisphere of FreeSurfer's fsaverage icosahedral meshes
FSAVERAGE_SIZES = {
    "fsaverage3": 642,
    "fsaverage4": 2562,
    "fsaverage5": 10242,
    "fsaverage6": 40962,
    "fsaverage7": 163842,
    "fsaverage": 163842,
}


def _times(values: Any, name: str, where: str, *, allow_empty: bool = False) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValidationError(f"{where}: {name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0 and not allow_empty:
        raise ValidationError(f"{where}: {name} is empty")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValidationError(f"{where}: {name}[{bad}] is not finite ({arr[bad]})")
    if arr.size > 1 and np.any(np.diff(arr) < 0):
        bad = int(np.flatnonzero(np.diff(arr) < 0)[0])
        raise ValidationError(
            f"{where}: {name} must be non-decreasing, but {name}[{bad + 1}]={arr[bad + 1]:.6g} "
            f"< {name}[{bad}]={arr[bad]:.6g}"
        )
    return arr


@dataclass(frozen=True)
class Word:
    """One word with its onset and offset in seconds from sound onset."""

    text: str
    onset: float
    offset: float

    @property
    def time(self) -> float:
        """The word's time as the reference pipeline uses it: its interval's midpoint."""
        return 0.5 * (self.onset + self.offset)


@dataclass(frozen=True, eq=False)
class Story:
    """The words of one story with their timing, and the TR grid of its fMRI rows.

    Parameters
    ----------
    name : str
        Story identifier (e.g. ``"wheretheressmoke"``).
    words : sequence of str
        The spoken words, in order, non-words already removed.
    onsets, offsets : array of float
        Start and end of each word, seconds from sound onset. Non-decreasing onsets,
        ``offsets >= onsets``.
    tr : float
        Repetition time in seconds.
    tr_times : array of float
        Time (seconds from sound onset) of each response row that goes with this story,
        after any trimming. Features are resampled onto exactly these times.
    phones : tuple (labels, onsets, offsets), optional
        Phone tier, when the transcript has one (for the phoneme-rate baseline).
    source : str, optional
        Where the story came from (a file path), used in error messages.
    """

    name: str
    words: tuple[str, ...]
    onsets: np.ndarray
    offsets: np.ndarray
    tr: float
    tr_times: np.ndarray
    phones: tuple[tuple[str, ...], np.ndarray, np.ndarray] | None = None
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        where = f"story {self.name!r}" + (f" ({self.source})" if self.source else "")
        words = tuple(str(w) for w in self.words)
        if len(words) == 0:
            raise ValidationError(f"{where}: has no words")
        onsets = _times(self.onsets, "onsets", where)
        offsets = _times(self.offsets, "offsets", where) if len(self.offsets) else onsets.copy()
        if not (len(words) == onsets.size == offsets.size):
            raise ValidationError(
                f"{where}: {len(words)} words but {onsets.size} onsets and {offsets.size} offsets"
            )
        if np.any(offsets < onsets):
            bad = int(np.flatnonzero(offsets < onsets)[0])
            raise ValidationError(
                f"{where}: word {bad} ({words[bad]!r}) ends at {offsets[bad]} before it starts at {onsets[bad]}"
            )
        tr = float(self.tr)
        if not np.isfinite(tr) or tr <= 0:
            raise ValidationError(f"{where}: tr must be a positive number of seconds, got {self.tr!r}")
        tr_times = _times(self.tr_times, "tr_times", where)
        if tr_times.size > 1 and np.any(np.diff(tr_times) <= 0):
            raise ValidationError(f"{where}: tr_times must be strictly increasing")
        phones = self.phones
        if phones is not None:
            labels, p_on, p_off = phones
            labels = tuple(str(p) for p in labels)
            p_on = _times(p_on, "phone onsets", where, allow_empty=True)
            p_off = _times(p_off, "phone offsets", where, allow_empty=True) if len(p_off) else p_on.copy()
            if not (len(labels) == p_on.size == p_off.size):
                raise ValidationError(f"{where}: phone labels and times differ in length")
            phones = (labels, p_on, p_off)
        for arr in (onsets, offsets, tr_times):
            arr.setflags(write=False)
        object.__setattr__(self, "words", words)
        object.__setattr__(self, "onsets", onsets)
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "tr", tr)
        object.__setattr__(self, "tr_times", tr_times)
        object.__setattr__(self, "phones", phones)

    # -- derived -----------------------------------------------------------------
    @property
    def n_words(self) -> int:
        return len(self.words)

    @property
    def n_trs(self) -> int:
        return int(self.tr_times.size)

    @property
    def word_times(self) -> np.ndarray:
        """Each word's time: the midpoint of its interval (the reference convention)."""
        return 0.5 * (self.onsets + self.offsets)

    @property
    def duration(self) -> float:
        return float(self.offsets[-1])

    def __len__(self) -> int:
        return self.n_words

    def __iter__(self) -> Iterator[Word]:
        for w, a, b in zip(self.words, self.onsets, self.offsets):
            yield Word(w, float(a), float(b))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Story):
            return NotImplemented
        return (
            self.name == other.name
            and self.words == other.words
            and np.array_equal(self.onsets, other.onsets)
            and np.array_equal(self.offsets, other.offsets)
            and self.tr == other.tr
            and np.array_equal(self.tr_times, other.tr_times)
        )

    __hash__ = object.__hash__

    @property
    def text(self) -> str:
        """The words joined by single spaces (what a language model reads)."""
        return " ".join(self.words)

    def replace(self, **changes: Any) -> "Story":
        """A copy with some fields changed (validated again)."""
        kw = {f: getattr(self, f) for f in ("name", "words", "onsets", "offsets", "tr", "tr_times", "phones", "source")}
        kw.update(changes)
        return Story(**kw)

    def __repr__(self) -> str:
        return (
            f"Story({self.name!r}, {self.n_words} words, {self.duration:.1f} s, "
            f"{self.n_trs} TRs of {self.tr:g} s)"
        )


class Responses(Mapping):
    """Subject x story -> float32 response array (TRs x targets), loaded lazily.

    Nothing is read at construction; each ``responses[subject, story]`` calls the
    loader registered for that pair and validates what it returns: 2-D, finite, and
    with the same number of targets for all of a subject's stories (and as many rows
    as expected, when ``n_trs`` is given). Errors name the ``source`` of the array.

    Parameters
    ----------
    loaders : mapping (subject, story) -> callable
        Each callable returns an array-like of shape (n_TRs, n_targets).
    sources : mapping (subject, story) -> str, optional
        Human-readable origin of each array (a file path) for error messages.
    n_trs : mapping story -> int, optional
        Expected number of rows per story; a mismatch is an error naming the source.
    """

    def __init__(
        self,
        loaders: Mapping[tuple[str, str], Callable[[], Any]],
        sources: Mapping[tuple[str, str], str] | None = None,
        n_trs: Mapping[str, int] | None = None,
    ) -> None:
        self._loaders = dict(loaders)
        self._sources = dict(sources or {})
        self._n_trs = dict(n_trs or {})
        self._n_targets: dict[str, tuple[int, str]] = {}

    # Mapping protocol ----------------------------------------------------------
    def __getitem__(self, key: tuple[str, str]) -> np.ndarray:
        subject, story = key
        try:
            loader = self._loaders[(subject, story)]
        except KeyError:
            raise KeyError(f"no responses for subject {subject!r}, story {story!r}") from None
        source = self._sources.get((subject, story), f"subject {subject}, story {story}")
        data = np.asarray(loader())
        return self._validate(data, subject, story, source)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)

    # ----------------------------------------------------------------------------
    @property
    def subjects(self) -> list[str]:
        return sorted({s for s, _ in self._loaders})

    def stories(self, subject: str) -> list[str]:
        return [st for s, st in self._loaders if s == subject]

    def subset(self, subjects) -> "Responses":
        """The same responses restricted to ``subjects`` (nothing is read)."""
        keep = set(subjects)
        return Responses(
            {k: v for k, v in self._loaders.items() if k[0] in keep},
            {k: v for k, v in self._sources.items() if k[0] in keep},
            self._n_trs,
        )

    def source(self, subject: str, story: str) -> str:
        return self._sources.get((subject, story), f"subject {subject}, story {story}")

    def _validate(self, data: np.ndarray, subject: str, story: str, source: str) -> np.ndarray:
        if data.ndim != 2:
            raise ValidationError(f"{source}: responses must be 2-D (TRs x targets), got shape {data.shape}")
        if data.shape[0] == 0 or data.shape[1] == 0:
            raise ValidationError(f"{source}: responses are empty, shape {data.shape}")
        if not np.issubdtype(data.dtype, np.number):
            raise ValidationError(f"{source}: responses must be numeric, got dtype {data.dtype}")
        data = np.ascontiguousarray(data, dtype=np.float32)
        finite = np.isfinite(data)
        if not finite.all():
            bad_rows, bad_cols = np.nonzero(~finite)
            raise ValidationError(
                f"{source}: responses contain {bad_rows.size} non-finite values "
                f"(first at TR {bad_rows[0]}, target {bad_cols[0]})"
            )
        expected = self._n_trs.get(story)
        if expected is not None and data.shape[0] != expected:
            raise ValidationError(
                f"{source}: has {data.shape[0]} TRs but story {story!r} has {expected} TR times; "
                "features and responses would not line up"
            )
        seen = self._n_targets.get(subject)
        if seen is None:
            self._n_targets[subject] = (data.shape[1], source)
        elif seen[0] != data.shape[1]:
            raise ValidationError(
                f"{source}: has {data.shape[1]} targets but {seen[1]} has {seen[0]}; "
                f"all of subject {subject!r}'s stories must have the same targets"
            )
        return data


@dataclass(frozen=True, eq=False)
class Space:
    """Where a subject's targets live.

    Use :meth:`fsaverage` for surfaces and :meth:`volume` for a subject's voxels.
    Surface targets are ordered left hemisphere then right hemisphere.
    """

    name: str
    kind: str  # "surface" or "volume"
    hemi_sizes: tuple[int, int] | None = None
    mask: np.ndarray | None = None
    affine: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("surface", "volume"):
            raise ValidationError(f"space {self.name!r}: kind must be 'surface' or 'volume', got {self.kind!r}")
        if self.kind == "surface":
            if self.hemi_sizes is None or len(self.hemi_sizes) != 2 or min(self.hemi_sizes) <= 0:
                raise ValidationError(f"space {self.name!r}: a surface needs two positive hemisphere sizes")
        else:
            if self.mask is None:
                raise ValidationError(f"space {self.name!r}: a volume space needs a mask")
            mask = np.asarray(self.mask)
            if mask.ndim != 3:
                raise ValidationError(f"space {self.name!r}: mask must be 3-D, got shape {mask.shape}")
            object.__setattr__(self, "mask", mask.astype(bool))
            if not self.mask.any():
                raise ValidationError(f"space {self.name!r}: mask selects no voxel")
            if self.affine is not None:
                aff = np.asarray(self.affine, dtype=float)
                if aff.shape != (4, 4):
                    raise ValidationError(f"space {self.name!r}: affine must be 4x4, got {aff.shape}")
                object.__setattr__(self, "affine", aff)

    @classmethod
    def fsaverage(cls, name: str = "fsaverage5") -> "Space":
        if name not in FSAVERAGE_SIZES:
            raise ValidationError(f"unknown surface {name!r}; known: {', '.join(FSAVERAGE_SIZES)}")
        n = FSAVERAGE_SIZES[name]
        return cls(name=name, kind="surface", hemi_sizes=(n, n))

    @classmethod
    def volume(cls, name: str, mask: np.ndarray, affine: np.ndarray | None = None) -> "Space":
        return cls(name=name, kind="volume", mask=mask, affine=affine)

    @property
    def n_targets(self) -> int:
        if self.kind == "surface":
            return int(sum(self.hemi_sizes))
        return int(self.mask.sum())

    @property
    def is_surface(self) -> bool:
        return self.kind == "surface"

    def hemi(self) -> np.ndarray:
        """Per-target hemisphere label ("L"/"R") for surfaces; empty strings for volumes."""
        if self.kind == "surface":
            nl, nr = self.hemi_sizes
            return np.array(["L"] * nl + ["R"] * nr)
        return np.full(self.n_targets, "", dtype="<U1")

    def check_hemispheres(self, counts: Sequence[int], sources: Sequence[str]) -> None:
        """Raise unless a (left, right) pair of files has this surface's vertices per hemisphere.

        A pair with the right total but the split in the wrong place (10,000 + 10,484
        for fsaverage5's 10,242 + 10,242) would put right-hemisphere vertices on the
        left; each file is checked on its own.

        Parameters
        ----------
        counts : (int, int)
            Vertices in the left and the right file.
        sources : (str, str)
            The two files, for the message.
        """
        if self.kind != "surface":
            return
        for hemi, n, want, src in zip(("left", "right"), counts, self.hemi_sizes, sources):
            if int(n) != int(want):
                raise ValidationError(
                    f"{src}: the {hemi} hemisphere has {int(n)} vertices but space {self.name} has {int(want)} per "
                    f"hemisphere (the pair has {int(sum(counts))}, {self.name} {self.n_targets}); "
                    "give the files of this space, [left, right]"
                )

    def check(self, data: np.ndarray, where: str = "data") -> None:
        """Raise if ``data``'s last axis does not have this space's number of targets."""
        if np.shape(data)[-1] != self.n_targets:
            raise ValidationError(
                f"{where}: has {np.shape(data)[-1]} targets but space {self.name} has {self.n_targets}"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Space):
            return NotImplemented
        same_mask = (self.mask is None and other.mask is None) or (
            self.mask is not None and other.mask is not None and np.array_equal(self.mask, other.mask)
        )
        return self.name == other.name and self.kind == other.kind and self.hemi_sizes == other.hemi_sizes and same_mask

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"Space({self.name!r}, {self.kind}, {self.n_targets} targets)"


def story_lengths(stories: Sequence[Story]) -> list[int]:
    """Number of TRs of each story, in order."""
    return [s.n_trs for s in stories]
