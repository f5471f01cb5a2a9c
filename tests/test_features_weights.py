"""Hub revisions streamed through a working cache under a disk budget (issue 19).

A mirror (a hub cache folder with 12 revisions of a tiny GPT-NeoX, in the real layout)
is the source; the sweep's working cache never holds more than the budget, features
equal those read from the mirror itself, and a killed stream's revisions are reused.
"""

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from brainalign.errors import DataNotFoundError, ValidationError
from brainalign.features import extract
from brainalign.features.testing import tiny_hub_cache
from brainalign.features.weights import WeightStream, parse_bytes, revision_bytes
from brainalign.stimulus import Story

REPO = "tiny-org/stream-neox"
REVS = [f"step{100 * (i + 1)}" for i in range(12)]
WORDS = "the keeper climbed the stairs at dusk and lit the lamp while the sea kept its slow time".split()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A hub cache folder holding the revisions (torch runs single-threaded: conftest)."""
    root = tmp_path_factory.mktemp("mirror") / "hub"
    tiny_hub_cache(root, REPO, REVS, arch="gpt_neox", n_layers=2, hidden=32)
    return root


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)


def _stories():
    on = np.arange(len(WORDS)) * 0.4
    return [Story("tale", WORDS, on, on + 0.3, 2.0, np.arange(3) * 2.0 + 1.0)]


def _disk(repo: Path) -> int:
    """Bytes of weights files on disk under a hub cache repo (blobs and copied snapshots)."""
    seen, total = set(), 0
    for f in repo.rglob("*") if repo.is_dir() else []:
        if f.is_file() and not f.is_symlink():
            key = f.stat().st_ino
            if key not in seen:
                seen.add(key)
                total += f.stat().st_size
    return total


class _Monitor:
    """Samples the working cache's size while a stream runs."""

    def __init__(self, repo: Path):
        self.repo, self.peak, self._stop = repo, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, _disk(self.repo))
            except FileNotFoundError:  # a file freed while being counted
                pass
            time.sleep(0.002)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def test_sweep_of_12_revisions_stays_within_a_budget_of_2(mirror, tmp_path):
    work = tmp_path / "work"
    size = revision_bytes(mirror, REPO, REVS[0])
    budget = 2 * size + size // 4  # two revisions (their sizes differ by a few bytes)
    stories = _stories()
    streamed, direct = {}, {}
    repo = work / ("models--" + REPO.replace("/", "--"))
    with _Monitor(repo) as mon, WeightStream(REPO, work, budget, mirror=mirror, prefetch=1) as ws:
        for i, rev in enumerate(REVS):
            ws.schedule(REVS[i:])
            ws.acquire(rev)
            streamed[rev] = extract(stories, model=REPO, revision=rev, hf_cache_dir=work, context_tokens=8,
                                    cache=False, progress=False).get("tale", 2)
            ws.done(rev)
    assert ws.fetched == REVS  # each revision fetched exactly once
    assert mon.peak <= budget and ws.peak_bytes <= budget
    assert ws.peak_bytes > size  # prefetching did overlap two revisions
    assert _disk(repo) == 0 and not list((repo / "snapshots").iterdir())  # every fetched revision freed
    for rev in REVS:  # the same features as read from the mirror itself
        direct = extract(stories, model=REPO, revision=rev, hf_cache_dir=mirror, context_tokens=8, cache=False,
                         progress=False).get("tale", 2)
        np.testing.assert_array_equal(streamed[rev], direct)
    assert not np.array_equal(streamed[REVS[0]], streamed[REVS[-1]])


def test_a_killed_stream_is_resumed_without_fetching_again(mirror, tmp_path):
    work = tmp_path / "work"
    first = WeightStream(REPO, work, mirror=mirror, prefetch=0)
    first.acquire(REVS[0])
    first.done(REVS[0])
    first.acquire(REVS[1])  # ... and the run is killed while it holds step200
    del first
    again = WeightStream(REPO, work, mirror=mirror, prefetch=0)
    again.acquire(REVS[1])
    assert again.fetched == []  # reused, not fetched again
    again.done(REVS[1])
    assert revision_bytes(work, REPO, REVS[1]) is None  # and freed: the killed run fetched it
    again.acquire(REVS[2])
    assert again.fetched == [REVS[2]]


def test_the_users_own_revisions_are_never_deleted(mirror, tmp_path):
    work = tmp_path / "work"
    keeper = WeightStream(REPO, work, mirror=mirror, prefetch=0, keep=True)
    keeper.acquire(REVS[3])
    keeper.done(REVS[3])  # keep=True: stays
    assert revision_bytes(work, REPO, REVS[3]) is not None
    # a revision in the cache that no stream fetched is the user's
    (work / ".brainalign-weights.json").unlink()
    ws = WeightStream(REPO, work, mirror=mirror, prefetch=0)
    ws.acquire(REVS[3])
    ws.done(REVS[3])
    assert ws.fetched == [] and revision_bytes(work, REPO, REVS[3]) is not None


def test_bad_budgets_and_sources_are_named():
    assert parse_bytes("30GB") == 30 * 10**9 and parse_bytes("1.5 GiB") == int(1.5 * 2**30) and parse_bytes(None) is None
    with pytest.raises(ValidationError, match="disk_budget: 'lots' is not a size"):
        parse_bytes("lots")
    with pytest.raises(ValidationError, match="must be positive"):
        parse_bytes(0)
    with pytest.raises(DataNotFoundError, match="holds no"):
        WeightStream(REPO, "/tmp/unused-work", mirror="/nonexistent/mirror")


def test_a_snapshot_shared_with_the_users_ref_is_never_deleted(mirror, tmp_path):
    """The user's `main` is the same commit as a revision the sweep fetches (Pythia's
    main is its last step): freeing that revision drops only its own ref."""
    work = tmp_path / "work"
    own = WeightStream(REPO, work, mirror=mirror, prefetch=0, keep=True)
    own.acquire(REVS[2])
    repo = work / ("models--" + REPO.replace("/", "--"))
    (repo / "refs" / "main").write_text((repo / "refs" / REVS[2]).read_text())
    (repo / "refs" / REVS[2]).unlink()
    (work / ".brainalign-weights.json").unlink()  # the user's download, not a stream's
    ws = WeightStream(REPO, work, mirror=mirror, prefetch=0)
    ws.acquire(REVS[2])
    ws.done(REVS[2])
    assert revision_bytes(work, REPO, "main") is not None  # the user's files are intact
    assert revision_bytes(work, REPO, REVS[2]) is None


def test_a_half_done_fetch_is_redone_and_leftovers_are_freed(mirror, tmp_path):
    work = tmp_path / "work"
    ws = WeightStream(REPO, work, mirror=mirror, prefetch=0)
    ws.acquire(REVS[4])
    ws.acquire(REVS[5])
    # killed: REVS[5] half-fetched (its ledger entry still pending, a file missing)
    import json

    ledger = work / ".brainalign-weights.json"
    data = json.loads(ledger.read_text())
    data[REPO][REVS[5]] = {"state": "pending"}
    ledger.write_text(json.dumps(data))
    repo = work / ("models--" + REPO.replace("/", "--"))
    snap = repo / "snapshots" / (repo / "refs" / REVS[5]).read_text()
    next(p for p in snap.iterdir() if p.suffix == ".safetensors").unlink()
    again = WeightStream(REPO, work, mirror=mirror, prefetch=0, budget=10 * revision_bytes(mirror, REPO, REVS[0]))
    again.free_unscheduled([REVS[5]])  # REVS[4]'s checkpoint was done before the kill
    assert revision_bytes(work, REPO, REVS[4]) is None and again.held_bytes == 0
    again.acquire(REVS[5])
    assert again.fetched == [REVS[5]] and any(p.suffix == ".safetensors" for p in snap.iterdir())
    again.done(REVS[5])
    assert revision_bytes(work, REPO, REVS[5]) is None


def test_a_failed_prefetch_is_retried_by_the_sweep(mirror, tmp_path, monkeypatch):
    ws = WeightStream(REPO, tmp_path / "work", mirror=mirror, prefetch=1)
    calls = []
    real = ws._copy_from_mirror

    def flaky(rev, replace=False):
        calls.append(rev)
        if len(calls) == 1:
            raise OSError("transient network error")
        real(rev, replace)

    monkeypatch.setattr(ws, "_copy_from_mirror", flaky)
    with pytest.raises(OSError):
        ws.acquire(REVS[0])
    ws.acquire(REVS[0])  # retried, and present afterwards
    assert revision_bytes(tmp_path / "work", REPO, REVS[0]) is not None and ws.fetched == [REVS[0]]
