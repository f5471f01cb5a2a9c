"""Hub revisions' weights as transient files, under a disk budget.

A sweep over every public checkpoint of a 7B model cannot keep them all (Pythia-6.9B:
154 revisions of ~14 GB). Features are the durable artefact; weights are needed only
while one checkpoint's features are extracted. :class:`WeightStream` fetches each
revision into a working Hugging Face cache just before its task and frees it after,
so that the bytes of weights on disk stay within ``budget``; a background thread
prefetches the next revisions while the current one computes, as far as the budget
allows.

Revisions come from the Hugging Face hub (``huggingface_hub.snapshot_download``) or
from a ``mirror``: another hub cache folder (a lab's shared cache on a network
filesystem), copied from. Revisions already in the working cache when a stream first
meets them are the user's and are never deleted; the ones a stream fetched are listed
in a ledger beside the cache (``.brainalign-weights.json``), so a run killed while
holding them reuses (and later frees) them instead of fetching them again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .._io import atomic_write_json
from ..errors import DataNotFoundError, ValidationError

log = logging.getLogger(__name__)

__all__ = ["WeightStream", "parse_bytes", "revision_bytes"]

#: what a revision needs for feature extraction (no optimizer states, no other formats)
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*", "*.tiktoken"]
_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
          "TIB": 2**40}


def parse_bytes(value: int | float | str | None, what: str = "disk_budget") -> int | None:
    """``"30GB"``, ``"1.5 TiB"``, ``2e9`` -> bytes (None stays None)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        n = float(value)
    else:
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:E[+-]?[0-9]+)?)([KMGT]I?B|B)?", str(value).strip().upper().replace(" ", ""))
        if m is None:
            raise ValidationError(f"{what}: {value!r} is not a size (e.g. 30GB, 500MB, 1.5TiB or a number of bytes)")
        n = float(m.group(1)) * _UNITS[m.group(2) or ""]
    if n <= 0:
        raise ValidationError(f"{what}: must be positive, got {value!r}")
    return int(n)


def _repo_dir(cache_dir: Path, model: str) -> Path:
    return Path(cache_dir) / ("models--" + model.replace("/", "--"))


def _commit_of(repo: Path, revision: str) -> str | None:
    ref = repo / "refs" / revision
    if ref.is_file():
        return ref.read_text().strip()
    return revision if (repo / "snapshots" / revision).is_dir() else None


def revision_bytes(cache_dir: str | os.PathLike, model: str, revision: str) -> int | None:
    """Bytes of a revision's files in a hub cache folder (None when it is not there)."""
    repo = _repo_dir(Path(cache_dir), model)
    commit = _commit_of(repo, revision)
    if commit is None:
        return None
    snap = repo / "snapshots" / commit
    return sum(f.stat().st_size for f in snap.rglob("*") if f.is_file()) if snap.is_dir() else None


@dataclass
class _Fetch:
    """A fetch in flight: waiters block on ``event``; ``error`` is set when it failed."""

    event: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


def _entries(value) -> dict[str, dict]:
    """A model's ledger entries (older ledgers listed revision names only)."""
    if isinstance(value, list):
        return {str(r): {"state": "done"} for r in value}
    return dict(value or {})


class WeightStream:
    """Fetch and free the weights of ``model``'s hub revisions within a disk budget.

    Parameters
    ----------
    model : str
        Hub id.
    cache_dir : path
        The working Hugging Face cache the sweep loads from (``hf_cache_dir``).
    budget : int, str or None
        Most bytes of weights this stream holds on disk at once (e.g. ``"30GB"``).
        None: no limit. A single revision larger than the budget is fetched alone, with
        a warning.
    keep : bool
        Keep every fetched revision (no freeing; the budget then only limits prefetch).
    mirror : path, optional
        A hub cache folder to copy revisions from instead of downloading them.
    prefetch : int
        How many upcoming revisions may be fetched ahead (budget permitting).
    """

    def __init__(self, model: str, cache_dir: str | os.PathLike, budget: int | str | None = None, *,
                 keep: bool = False, mirror: str | os.PathLike | None = None, prefetch: int = 1) -> None:
        self.model, self.cache_dir = model, Path(cache_dir).expanduser()
        self.budget = parse_bytes(budget)
        self.keep, self.prefetch = bool(keep), max(0, int(prefetch))
        self.mirror = Path(mirror).expanduser() if mirror is not None else None
        if self.mirror is not None and not _repo_dir(self.mirror, model).is_dir():
            raise DataNotFoundError(f"mirror {self.mirror} holds no {model} (no {_repo_dir(self.mirror, model).name} folder)")
        self.repo = _repo_dir(self.cache_dir, model)
        self._ledger_path = self.cache_dir / ".brainalign-weights.json"
        self._lock = threading.Condition()
        self._held: dict[str, int] = {}  # revision -> bytes, fetched by a stream and not yet freed
        self._ref_only: set[str] = set()  # fetched revisions whose snapshot was already here (another ref's)
        self._fetching: dict[str, _Fetch] = {}
        self._queue: list[str] = []
        self._sizes: dict[str, int | None] = {}
        self.fetched: list[str] = []  # revisions this stream fetched (downloads or copies), in order
        self.peak_bytes = 0
        self._thread: threading.Thread | None = None
        self._stop = False
        self._pending: set[str] = set()  # in the ledger as started but not finished (a killed fetch)
        with self._ledger() as data:
            for rev, entry in _entries(data.get(self.model)).items():
                if entry.get("state") != "done":
                    self._pending.add(rev)  # re-fetched (a download resumes), and ours to free
                    continue
                size = revision_bytes(self.cache_dir, self.model, rev)
                if size is not None:
                    self._held[rev] = size
                    if entry.get("ref_only"):
                        self._ref_only.add(rev)

    # -- the ledger of revisions fetched by brainalign (survives a killed run; shared by
    # the streams of every process using this cache, under a file lock)
    @contextlib.contextmanager
    def _ledger(self):
        import fcntl

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cache_dir / ".brainalign-weights.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = json.loads(self._ledger_path.read_text()) if self._ledger_path.is_file() else {}
                yield data
                atomic_write_json(self._ledger_path, data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _mark(self, revision: str, entry: dict | None) -> None:
        """Set (or, with None, remove) this model's ledger entry for ``revision``."""
        with self._ledger() as data:
            entries = _entries(data.get(self.model))
            if entry is None:
                entries.pop(revision, None)
            else:
                entries[revision] = entry
            data[self.model] = entries

    @property
    def held_bytes(self) -> int:
        return sum(self._held.values())

    def _present(self, revision: str) -> bool:
        """On disk and complete (a fetch a killed run left half done is not)."""
        return revision not in self._pending and revision_bytes(self.cache_dir, self.model, revision) is not None

    # -- fetching
    def _size(self, revision: str) -> int | None:
        if revision in self._sizes:
            return self._sizes[revision]
        if self.mirror is not None:
            size = revision_bytes(self.mirror, self.model, revision)
        else:
            try:
                from fnmatch import fnmatch

                from huggingface_hub import HfApi

                info = HfApi().model_info(self.model, revision=revision, files_metadata=True)
                size = sum(int(s.size or 0) for s in info.siblings or []
                           if any(fnmatch(s.rfilename, p) for p in ALLOW_PATTERNS))
            except Exception as exc:  # offline or no metadata: fetched alone, accounted after
                log.debug("size of %s@%s unknown: %s", self.model, revision, exc)
                size = None
        self._sizes[revision] = size
        return size

    def _copy_from_mirror(self, revision: str, replace: bool = False) -> None:
        src = _repo_dir(self.mirror, self.model)
        commit = _commit_of(src, revision)
        if commit is None:
            raise DataNotFoundError(f"mirror {self.mirror} holds no revision {revision!r} of {self.model}")
        snap_src = src / "snapshots" / commit
        snap = self.repo / "snapshots" / commit
        if replace:  # a killed run's half-done copy: ours, redone
            shutil.rmtree(snap, ignore_errors=True)
        if not snap.is_dir():  # a snapshot already here (another ref's) is used as it is, never replaced
            tmp = self.repo / "snapshots" / f".{commit}.part"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for f in sorted(snap_src.rglob("*")):
                if f.is_file():
                    dest = tmp / f.relative_to(snap_src)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(f, dest)  # follows the mirror's blob symlinks
            os.replace(tmp, snap)
        ref = self.repo / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)

    def _download(self, revision: str) -> None:
        from huggingface_hub import snapshot_download

        snapshot_download(self.model, revision=revision, cache_dir=self.cache_dir, allow_patterns=ALLOW_PATTERNS)

    def _fetch(self, revision: str) -> None:
        snaps = self.repo / "snapshots"
        before = {p.name for p in snaps.iterdir()} if snaps.is_dir() else set()
        redo = revision in self._pending  # a killed run's fetch: what it left is ours
        self._mark(revision, {"state": "pending"})  # a kill from here on leaves it ours to redo and free
        if self.mirror is not None:
            self._copy_from_mirror(revision, replace=redo)
        else:
            self._download(revision)  # huggingface_hub fetches what is missing
        commit = _commit_of(self.repo, revision)
        ref_only = commit in before and not redo  # its files were here before: only its ref is ours
        size = 0 if ref_only else (revision_bytes(self.cache_dir, self.model, revision) or 0)
        self._mark(revision, {"state": "done", "ref_only": ref_only})
        with self._lock:
            self._held[revision] = size
            self._pending.discard(revision)
            if ref_only:
                self._ref_only.add(revision)
            self.fetched.append(revision)
            self.peak_bytes = max(self.peak_bytes, self.held_bytes)
            self._lock.notify_all()
        log.info("weights of %s@%s fetched (%.3g MB; %.3g MB held)", self.model, revision, size / 1e6,
                 self.held_bytes / 1e6)

    def _fits(self, size: int | None) -> bool:
        if self.budget is None:
            return True
        return self.held_bytes + (size or 0) <= self.budget

    def acquire(self, revision: str, *, prefetching: bool = False) -> None:
        """Make ``revision`` present in the working cache (blocks until it is); None
        (a local folder) does nothing. A fetch that failed in another thread is retried
        here (and its error raised if it fails again)."""
        if revision is None:
            return
        while True:
            with self._lock:
                if self._present(revision):
                    return
                job = self._fetching.get(revision)
                if job is None:  # ours to fetch: registered in the same critical section as the check
                    job = self._fetching[revision] = _Fetch()
                    break
            job.event.wait()
            if prefetching:
                return
        try:
            size = self._size(revision)  # maybe a network call: outside the lock
            with self._lock:
                # another fetch in flight may be what fills the budget: wait for it; when the
                # held revisions are all still needed, fetch anyway (the sweep must go on)
                while not self._fits(size) and len(self._fetching) > 1:
                    self._lock.wait(timeout=1.0)
                if not self._fits(size):
                    log.warning("%s@%s: %.3g GB of weights held (budget %.3g GB); fetching it goes over the budget",
                                self.model, revision, self.held_bytes / 1e9, self.budget / 1e9)
            self._fetch(revision)
        except BaseException as exc:
            job.error = exc
            raise
        finally:
            with self._lock:
                self._fetching.pop(revision, None)
                self._lock.notify_all()
            job.event.set()

    def release(self, revision: str) -> None:
        """Free ``revision``'s files if this stream (or a killed one) fetched them: its
        snapshot and the blobs no other snapshot uses, or only its ref when the snapshot
        was already here for another ref."""
        with self._lock:
            if self.keep or revision not in self._held:
                return
            self._held.pop(revision)
            ref_only = revision in self._ref_only
            self._ref_only.discard(revision)
        self._delete(revision, ref_only)
        self._mark(revision, None)
        with self._lock:
            self._lock.notify_all()

    def _delete(self, revision: str, ref_only: bool) -> None:
        commit = _commit_of(self.repo, revision)
        if commit is None:
            return
        (self.repo / "refs" / revision).unlink(missing_ok=True)
        refs = self.repo / "refs"
        others = {f.read_text().strip() for f in refs.rglob("*") if f.is_file()} if refs.is_dir() else set()
        if ref_only or commit in others:  # another ref (the user's, or another revision) still needs the files
            log.info("ref %s of %s freed (its files belong to another ref)", revision, self.model)
            return
        snap = self.repo / "snapshots" / commit
        blobs = {Path(os.path.realpath(f)) for f in snap.rglob("*") if f.is_symlink()}
        shutil.rmtree(snap, ignore_errors=True)
        still = {Path(os.path.realpath(f)) for f in (self.repo / "snapshots").rglob("*") if f.is_symlink()}
        for b in blobs - still:
            b.unlink(missing_ok=True)
        log.info("weights of %s@%s freed", self.model, revision)

    def free_unscheduled(self, keep: Iterable[str]) -> None:
        """Free the revisions a killed run left that this run will not use (``keep``:
        the revisions it will acquire), so they do not hold the budget."""
        keep = set(keep)
        for rev in [r for r in list(self._held) if r not in keep]:
            self.release(rev)

    # -- prefetching
    def schedule(self, revisions: Iterable[str]) -> None:
        """The revisions the sweep will acquire next, in order; the background thread
        fetches up to ``prefetch`` of them ahead, within the budget."""
        with self._lock:
            self._queue = [r for r in revisions if r is not None]
            if self._thread is None and self.prefetch:
                self._thread = threading.Thread(target=self._prefetch_loop, name="brainalign-prefetch", daemon=True)
                self._thread.start()
            self._lock.notify_all()

    def _next_to_prefetch(self) -> str | None:
        """The next revision to fetch ahead: only once the sweep's current one (the
        first of the schedule) is on disk, so prefetching never takes its room."""
        if not self._queue or not self._present(self._queue[0]):
            return None
        for r in self._queue[1 : 1 + self.prefetch]:
            if r not in self._fetching and not self._present(r):
                return r
        return None

    def _prefetch_loop(self) -> None:
        while True:
            with self._lock:
                while not self._stop and self._next_to_prefetch() is None:
                    self._lock.wait(timeout=0.5)
                if self._stop:
                    return
                rev = self._next_to_prefetch()
            size = self._size(rev)  # outside the lock
            with self._lock:
                # an unknown size is not prefetched (it could not be kept within the budget)
                go = size is not None and self._fits(size) and rev in self._queue
                if not go:
                    self._lock.wait(timeout=0.5)
                    continue
            try:
                self.acquire(rev, prefetching=True)
            except Exception as exc:  # noqa: BLE001 - the sweep's own acquire retries and reports it
                log.warning("prefetch of %s@%s failed: %s", self.model, rev, exc)
                with self._lock:
                    self._queue = [r for r in self._queue if r != rev]

    def done(self, revision: str) -> None:
        """The sweep finished with ``revision``: drop it from the schedule and free it."""
        if revision is None:
            return
        with self._lock:
            self._queue = [r for r in self._queue if r != revision]
        self.release(revision)

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> "WeightStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
