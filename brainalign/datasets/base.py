"""The :class:`Dataset` every adapter returns, and the contract of a dataset adapter.

The adapter contract
--------------------
A dataset adapter is anything with a ``load`` function (a module such as
:mod:`brainalign.datasets.lebel2023`, or an object) registered under a name with
:func:`brainalign.datasets.register_dataset`; :func:`brainalign.datasets.load` looks the
name up and calls it. :class:`DatasetAdapter` spells the contract out:

``load(root, subjects=None, **options) -> Dataset``
    ``root`` is where the data live (a folder, a file, or ``None`` for data generated on
    demand); ``subjects`` keeps only these subjects (``None``: every subject found).
    The options an adapter takes are the keyword parameters of its signature:
    :func:`~brainalign.datasets.load` refuses any other option with a
    :class:`~brainalign.errors.ValidationError` naming it and the accepted ones, before
    calling the adapter (an adapter whose ``load`` takes ``**kwargs`` checks its own).
    It returns a :class:`Dataset` (or a subclass): stories, subjects, spaces, the
    train/test split and lazily read responses. Nothing large is read by ``load``.

``check(root, subjects=None, **options) -> dict`` (optional)
    What of the dataset is on disk, without loading it; ``brainalign datasets check
    NAME ROOT`` prints it. Keys: ``present``, ``missing``, ``not_downloaded`` (lists of
    paths relative to ``root``), ``ok`` (bool), ``command`` (what gets the missing files,
    or ``None``); optional ``problems`` (list of str), ``stories``, ``excluded``,
    ``missing_transcripts``. An adapter without ``check`` has nothing on disk to check.

Errors an adapter raises:

* a subject the dataset does not have: :class:`UnknownSubjectError` (a
  ``ValidationError`` and a ``KeyError``, naming the subject and the subjects there
  are); what :meth:`Dataset.space`, :meth:`Dataset.responses` ... raise as well;
* a subject (or story) that belongs to the dataset but whose files are not on disk:
  :class:`~brainalign.errors.DataNotFoundError`, or
  :class:`~brainalign.errors.NotDownloadedError` for git-annex pointers, with the
  command that gets them;
* malformed files or options: :class:`~brainalign.errors.ValidationError` naming the
  file (and line) or the option.

A minimal adapter::

    from brainalign.datasets import Dataset, register_dataset

    def load(root, subjects=None, n_trs=100):
        ...  # read what lives under root
        return Dataset("mydata", stories, subjects, space, responses, train, test)

    register_dataset("mydata", load, "my lab's recordings")  # or a module path: "mypkg.mydata"
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import ValidationError
from ..stimulus import Responses, Space, Story
from ..timing import check_words_in_scan, zscore_per_story

__all__ = ["Dataset", "DatasetAdapter", "UnknownSubjectError", "response_cache_bytes"]


class UnknownSubjectError(ValidationError, KeyError):
    """A subject the dataset does not have.

    Both a :class:`~brainalign.errors.ValidationError` (bad input) and a ``KeyError``
    (a lookup by subject that failed), so either ``except`` catches it.
    """

    __str__ = ValidationError.__str__  # the message as written, not KeyError's repr of it


@runtime_checkable
class DatasetAdapter(Protocol):
    """What :func:`brainalign.datasets.load` calls (see the module docstring).

    ``check(root, subjects=None, **options) -> dict`` is optional and not part of the
    runtime check.
    """

    def load(self, root: str | os.PathLike | None, subjects: Sequence[str] | None = None, **options: Any) -> "Dataset":
        """The dataset under ``root``, restricted to ``subjects`` when given."""
        ...

# stories whose words were checked against their scans (a subset of a dataset does not warn again)
_checked_stories: "weakref.WeakSet[Story]" = weakref.WeakSet()


def response_cache_bytes() -> int:
    """Memory a dataset may keep for stacked responses it has read.

    ``$BRAINALIGN_RESPONSE_CACHE_MB`` if set (0 turns the cache off), else a quarter of
    the memory available now.
    """
    env = os.environ.get("BRAINALIGN_RESPONSE_CACHE_MB")
    if env is not None:
        return int(float(env) * 2**20)
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh if ":" in line}
        return info.get("MemAvailable", 0) // 4
    except OSError:  # not Linux
        return 2 * 2**30


class Dataset:
    """Stories with word timings and subjects' responses, aligned row for row.

    Parameters
    ----------
    name : str
        Dataset name (``"lebel2023"``, ``"narratives"``, ``"simulated"``...).
    stories : sequence of Story
        Every story any selected subject heard, in a fixed order. A story whose words
        run well past its scan is refused, a few late words are a warning
        (:func:`~brainalign.timing.check_words_in_scan`).
    subjects : sequence of str
    spaces : Space or mapping subject -> Space
        Where each subject's targets live.
    responses : Responses
        (subject, story) -> array (story.n_trs x n_targets), read on demand. The pairs
        present define which stories each subject has.
    train_stories, test_stories : sequence of str
        The split. Stories a subject lacks are skipped for that subject.
    repeats : mapping (subject, story) -> callable, optional
        Loaders of single-presentation responses (n_repeats x n_trs x n_targets) of a
        repeated story, for noise ceilings.
    info : dict, optional
        Free-form metadata (root folder, options, card version...).
    """

    def __init__(
        self,
        name: str,
        stories: Sequence[Story],
        subjects: Sequence[str],
        spaces: Space | Mapping[str, Space],
        responses: Responses,
        train_stories: Sequence[str],
        test_stories: Sequence[str],
        repeats: Mapping[tuple[str, str], Callable[[], Any]] | None = None,
        info: dict | None = None,
    ) -> None:
        self.name = name
        self.stories: dict[str, Story] = {}
        for s in stories:
            if s.name in self.stories:
                raise ValidationError(f"dataset {name!r}: story {s.name!r} appears twice")
            self.stories[s.name] = s
        unchecked = [s for s in self.stories.values() if s not in _checked_stories]
        check_words_in_scan(unchecked, where=f"dataset {name!r}")
        _checked_stories.update(unchecked)
        self.subjects = list(subjects)
        if not self.subjects:
            raise ValidationError(f"dataset {name!r}: no subjects")
        self._spaces = dict(spaces) if isinstance(spaces, Mapping) else {s: spaces for s in self.subjects}
        missing = [s for s in self.subjects if s not in self._spaces]
        if missing:
            raise ValidationError(f"dataset {name!r}: no space for subjects {missing}")
        self._responses = responses
        self.train_stories = list(train_stories)
        self.test_stories = list(test_stories)
        for st in self.train_stories + self.test_stories:
            if st not in self.stories:
                raise ValidationError(f"dataset {name!r}: split names story {st!r}, which has no transcript")
        overlap = set(self.train_stories) & set(self.test_stories)
        if overlap:
            raise ValidationError(f"dataset {name!r}: stories {sorted(overlap)} are in both train and test")
        self._repeats = dict(repeats or {})
        self.info = dict(info or {})
        self._stacked: OrderedDict[tuple, np.ndarray] = OrderedDict()

    # -- access ------------------------------------------------------------------
    def space(self, subject: str) -> Space:
        self._check_subject(subject)
        return self._spaces[subject]

    def stories_of(self, subject: str) -> list[str]:
        """The stories ``subject`` has responses for, in the dataset's story order."""
        self._check_subject(subject)
        have = set(self._responses.stories(subject))
        return [s for s in self.stories if s in have]

    def train_stories_of(self, subject: str) -> list[str]:
        have = set(self.stories_of(subject))
        return [s for s in self.train_stories if s in have]

    def test_stories_of(self, subject: str) -> list[str]:
        have = set(self.stories_of(subject))
        return [s for s in self.test_stories if s in have]

    def responses(self, subject: str, story: str) -> np.ndarray:
        """float32 array (n_trs x n_targets), read from disk now."""
        self._check_subject(subject)
        if story not in self.stories:
            raise KeyError(f"dataset {self.name!r} has no story {story!r}")
        return self._responses[subject, story]

    def stacked_responses(self, subject: str, stories: Sequence[str], zscore: bool = True) -> np.ndarray:
        """Responses of ``stories`` stacked in order (float32), z-scored per story if asked.

        A sweep asks for the same stacks at every checkpoint, so the most recent ones
        are kept in memory (least recently used first out, within
        :func:`response_cache_bytes`). The returned array is read-only.
        """
        key = (subject, tuple(stories), bool(zscore))
        hit = self._stacked.get(key)
        if hit is not None:
            self._stacked.move_to_end(key)
            return hit
        blocks = [self.responses(subject, st) for st in stories]
        Y = np.vstack(blocks)
        if zscore:
            Y = zscore_per_story(Y, [b.shape[0] for b in blocks])
        Y = np.ascontiguousarray(Y, dtype=np.float32)
        Y.setflags(write=False)
        budget = response_cache_bytes()
        if Y.nbytes <= budget:
            self._stacked[key] = Y
            while sum(a.nbytes for a in self._stacked.values()) > budget:
                self._stacked.popitem(last=False)
        return Y

    def has_repeats(self, subject: str, story: str) -> bool:
        return (subject, story) in self._repeats

    def repeats(self, subject: str, story: str) -> np.ndarray | None:
        """float32 (n_repeats x n_trs x n_targets) single presentations, or None."""
        loader = self._repeats.get((subject, story))
        if loader is None:
            return None
        arr = np.asarray(loader(), dtype=np.float32)
        n_trs = self.stories[story].n_trs
        if arr.ndim != 3 or arr.shape[1] != n_trs or arr.shape[0] < 2:
            raise ValidationError(
                f"dataset {self.name!r}: repeats of {subject}/{story} must be (n_repeats>=2, {n_trs}, targets), "
                f"got {arr.shape}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValidationError(f"dataset {self.name!r}: repeats of {subject}/{story} contain NaN or inf")
        return arr

    @property
    def responses_map(self) -> Responses:
        return self._responses

    def _check_subject(self, subject: str) -> None:
        if subject not in self._spaces:
            raise UnknownSubjectError(f"dataset {self.name!r} has no subject {subject!r} (subjects: {self.subjects})")

    def subset(self, subjects: Sequence[str]) -> "Dataset":
        """The same dataset restricted to some subjects."""
        for s in subjects:
            self._check_subject(s)
        keep = set(subjects)
        return type(self)(
            self.name,
            list(self.stories.values()),
            list(subjects),
            {s: self._spaces[s] for s in subjects},
            self._responses.subset(subjects),
            self.train_stories,
            self.test_stories,
            {k: v for k, v in self._repeats.items() if k[0] in keep},
            self.info,
            **self._subset_kwargs(),
        )

    def _subset_kwargs(self) -> dict[str, Any]:
        """Extra constructor arguments a subclass carries over to :meth:`subset`."""
        return {}

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, {len(self.subjects)} subjects, {len(self.stories)} stories: "
            f"{len(self.train_stories)} train, {len(self.test_stories)} test)"
        )
