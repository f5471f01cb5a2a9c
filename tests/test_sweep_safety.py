"""Whole sweeps that are killed at every kind of write, or started twice at once (issue 12).

A driver process runs ``brainalign run`` under a Python audit hook that counts every
filesystem write below the output folder (open for writing, rename, link, remove,
mkdir, chmod) and SIGKILLs the process at the Nth: a real kill at a real write point,
whatever code does the write (zarr chunks and metadata, markers, the lock's owner note).
"""

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from brainalign import ValidationError
from brainalign.sweep import ResultsStore, Sweep, make_plan, run

pytestmark = pytest.mark.slow

PROVENANCE_VARS = ["task_seconds", "task_peak_rss_mb"]

_DRIVER = textwrap.dedent("""
    import os, signal, sys, time
    root, kill_at, log, config, start = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
    count = 0
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    EVENTS = ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.chmod", "os.truncate", "shutil.rmtree", "os.link")

    def hook(event, args):
        global count
        if event == "open":
            path, mode, flags = args
            if not (any(c in (mode or "") for c in "wax+") or (flags or 0) & WRITE):
                return
        elif event in EVENTS:
            path = args[0]
        else:
            return
        if not isinstance(path, (str, bytes)) or not os.fsdecode(path).startswith(root):
            return
        count += 1
        if log:
            with open(log, "a") as fh:
                fh.write(f"{count} {event} {os.fsdecode(path)[len(root):]}\\n")
        if count == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    from brainalign.cli import main
    time.sleep(max(0.0, start - time.time()))  # both racers start here, imports done
    sys.addaudithook(hook)
    sys.exit(main(["run", config, "--no-report"]))
""")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from brainalign.datasets import _corpus
    from brainalign.training import train_tiny

    out = tmp_path_factory.mktemp("tiny")
    return train_tiny(_corpus.stories_dir(), out / "model", n_layers=2, hidden=32, heads=2, seq_len=32,
                      steps=30, batch_size=4, checkpoints=3, seed=0)


def _config(path: Path, model, store: Path, revisions=None, **over) -> Path:
    cfg = {
        "dataset": {"name": "simulated", "options": {"space": 200, "stories": 4, "features": "random:8", "n_subjects": 1,
                                                     "snr": 2.0}},
        "model": {"name": str(model.out_dir), **({"revisions": revisions} if revisions else {})},
        "layers": "all",
        "features": {"context_tokens": 32, "batch_size": 8},
        "encoding": {"alphas": {"logspace": [0, 4, 5]}, "n_folds": 3},
        "output": {"store": str(store)},
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _drive(root: Path, config: Path, kill_at: int = 0, log: Path | None = None, start: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(root), str(kill_at), str(log or ""), str(config), str(start)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _values(path) -> xr.Dataset:
    return Sweep(path).results.drop_vars(PROVENANCE_VARS).drop_attrs()


def _events(log: Path) -> list[tuple[int, str, str]]:
    rows = [line.split(" ", 2) for line in log.read_text().splitlines()]
    return [(int(n), ev, p) for n, ev, p in rows]


def _kill_points(events, n_even: int) -> dict[str, int]:
    """Write points of every kind, plus some spread evenly over the whole run."""
    def first(pattern, event=None, after=0):
        return next(n for n, ev, p in events if n > after and re.search(pattern, p) and (event is None or ev == event))

    marker_tmp = first(r"/done/\.", "open")
    points = {
        "lock owner note": first(r"^/\.out\.zarr\.lock\.json$", "open"),
        "store creation": first(r"^/\.out\.zarr\.[^/]+/", "open"),
        "store renamed into place": first(r"^/\.out\.zarr\.[^/]+$", "os.rename"),
        "a region's chunk": first(r"^/out\.zarr/score/", "open"),
        "between data and marker": marker_tmp,
        "empty temp marker": first(r"/done/\.", "open", after=marker_tmp),
        "full temp marker before rename": first(r"/done/\.", "os.rename"),
        "final attributes": max(n for n, ev, p in events if p.startswith("/out.zarr/.zattrs")),
    }
    for n in np.linspace(1, len(events), n_even + 2)[1:-1].astype(int):
        points[f"write {n} of {len(events)}"] = int(n)
    return points


_EXPECTED = ("taking over the lock", "rolled back an extension", "is empty or corrupt")


def _resume(cfg):
    """Resume after a kill: only the warnings a kill explains."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sweep = run(cfg, progress=False)
    odd = [str(w.message) for w in caught if issubclass(w.category, UserWarning)
           and "store" in str(w.message) and not any(e in str(w.message) for e in _EXPECTED)]
    assert not odd, odd
    return sweep, [str(w.message) for w in caught]


def _assert_clean(store: Path, what: str) -> None:
    assert not [p for p in store.parent.glob(".out.zarr.*") if p.is_dir()], f"{what}: temp folders left"
    assert not (store.parent / ".out.zarr.lock.json").exists(), f"{what}: the lock's owner note outlived its writer"
    assert not list(store.rglob("*.partial")), f"{what}: zarr temp files left"
    assert not list((store / ".brainalign").rglob(".*")), f"{what}: temp markers left"


def test_kill_at_every_kind_of_write_then_resume_equals_uninterrupted(tmp_path, tiny_model):
    ref_store = tmp_path / "ref" / "out.zarr"
    log = tmp_path / "events.log"
    proc = _drive(ref_store.parent, _config(tmp_path / "ref.yaml", tiny_model, ref_store), log=log)
    assert proc.wait() == 0, proc.stderr.read()
    reference = _values(ref_store)
    for what, n in _kill_points(_events(log), n_even=3).items():
        store = tmp_path / f"k{n}" / "out.zarr"
        cfg = _config(tmp_path / f"k{n}.yaml", tiny_model, store)
        proc = _drive(store.parent, cfg, kill_at=n)
        assert proc.wait() == -9, f"{what}: the kill at write {n} did not happen ({proc.stderr.read()[-2000:]})"
        resumed, _ = _resume(cfg)
        xr.testing.assert_identical(_values(resumed.path), reference)
        _assert_clean(store, what)


def test_kill_while_extending_rolls_back_then_resume_equals_uninterrupted(tmp_path, tiny_model):
    two, three = ["checkpoint-0", "checkpoint-30"], ["checkpoint-0", "checkpoint-1", "checkpoint-30"]
    reference = _values(run(_config(tmp_path / "ref.yaml", tiny_model, tmp_path / "ref" / "out.zarr", three),
                            progress=False).path)
    base = tmp_path / "base" / "out.zarr"
    run(_config(tmp_path / "base.yaml", tiny_model, base, two), progress=False)
    attrs = set(ResultsStore(base).load().attrs)

    def copy_of_base(name):
        store = tmp_path / name / "out.zarr"
        store.parent.mkdir()
        shutil.copytree(base, store)
        return store, _config(tmp_path / f"{name}.yaml", tiny_model, store, three)

    # where the extension writes: its journal, one resize per array (labels last), the journal's removal
    probe, cfg = copy_of_base("probe")
    log = tmp_path / "events.log"
    proc = _drive(probe.parent, cfg, log=log)
    assert proc.wait() == 0, proc.stderr.read()
    events = _events(log)
    begin = next(n for n, ev, p in events if "/.extending." in p)  # the journal's temp file
    end = next(n for n, ev, p in events if ev == "os.remove" and p.endswith("/extending.json"))
    for n in sorted({begin + 3, (begin + end) // 2, end - 1}):  # from the journal in place to its removal
        store, cfg = copy_of_base(f"k{n}")
        proc = _drive(store.parent, cfg, kill_at=n)
        assert proc.wait() == -9
        grown, caught = _resume(cfg)
        assert any("rolled back an extension" in w for w in caught), caught
        xr.testing.assert_identical(_values(grown.path), reference)
        assert set(ResultsStore(store).load().attrs) == attrs  # none of the attributes lost
        _assert_clean(store, f"extension write {n}")
    # the grown store's attributes are whole: its report is made as any other's
    from brainalign.sweep.analyze import report

    html = report(store, tmp_path / "report.html", internal=False, movie=False).read_text()
    assert "checkpoint-1" in html and "3 of 3 checkpoints done" in html


def test_two_runs_at_the_same_instant_one_refuses_with_the_lock_message(tmp_path, tiny_model):
    revs = ["checkpoint-0", "checkpoint-30"]
    reference = _values(run(_config(tmp_path / "ref.yaml", tiny_model, tmp_path / "ref" / "out.zarr", revs),
                            progress=False).path)  # also warms the feature cache the racers share
    trials = int(os.environ.get("BRAINALIGN_LOCK_TRIALS", 20))
    for trial in range(trials):
        store = tmp_path / f"t{trial}" / "out.zarr"
        cfg = _config(tmp_path / f"t{trial}.yaml", tiny_model, store, revs)
        start = time.time() + 6.0  # both import, then wait for this instant
        racers = [_drive(store.parent, cfg, start=start) for _ in range(2)]
        while all(p.poll() is None for p in racers):
            time.sleep(0.01)
        loser = next(p for p in racers if p.poll() is not None)
        winner = next(p for p in racers if p is not loser)
        assert loser.returncode == 2, loser.stderr.read()
        err = loser.stderr.read()
        assert f"out.zarr is being written by PID {winner.pid} on " in err, err
        assert winner.poll() is None, "the refusal came at once, while the other run works"
        assert winner.wait() == 0, winner.stderr.read()
        xr.testing.assert_identical(_values(store), reference)


def test_changing_roi_settings_never_mixes_curves(tmp_path, tiny_model):
    store = tmp_path / "out.zarr"
    run(_config(tmp_path / "a.yaml", tiny_model, store, ["checkpoint-0", "checkpoint-30"]), progress=False)
    other = _config(tmp_path / "b.yaml", tiny_model, store, ["checkpoint-0", "checkpoint-1", "checkpoint-30"],
                    rois={"how": "top10"})
    assert make_plan(other).settings_hash != make_plan(tmp_path / "a.yaml").settings_hash
    with pytest.raises(ValidationError, match="other settings.*--force"):
        run(other, progress=False)
    top = run(other, force=True, progress=False).results
    score = top.score.values
    k = max(1, int(round(0.1 * score.shape[-1])))
    want = np.sort(score, axis=-1)[..., -k:].mean(-1)
    np.testing.assert_allclose(top.roi_score.sel(roi="whole_cortex").values, want, rtol=1e-5)


def test_whole_plan_is_checked_before_features(tmp_path, tiny_model):
    cfg = _config(tmp_path / "a.yaml", tiny_model, tmp_path / "out.zarr", stats={"test": "block", "block_size": 500})
    with pytest.raises(ValidationError, match=r"stats.block_size: 500 TRs make only 0 blocks of subject sim01's \d+ "
                                              r"test TRs; a permutation test needs at least 10"):
        run(cfg, progress=False)
    cfg = _config(tmp_path / "b.yaml", tiny_model, tmp_path / "out.zarr", rois={"how": "fraction_significant"},
                  stats={"test": "none"})
    with pytest.raises(ValidationError, match="rois.how: 'fraction_significant' needs significance tests"):
        run(cfg, progress=False)
    assert not (tmp_path / "out.zarr").exists()


def test_a_store_of_an_older_version_is_rekeyed_or_refused_by_its_settings(tmp_path, tiny_model):
    """An older brainalign hashed fewer settings (not rois) and wrote ``stats:
    {permutations: 0}`` for "no test": its store resumes when its settings are this run's,
    and is refused, naming the settings, when they are not."""
    import json

    revs = ["checkpoint-0", "checkpoint-30"]
    path = _config(tmp_path / "a.yaml", tiny_model, tmp_path / "out.zarr", revs, stats={"test": "none"})
    first = run(path, progress=False)
    store = ResultsStore(first.path)
    # as the older version wrote it: another hash everywhere, its own spelling of the config
    meta = first.path / ".brainalign"
    layout = json.loads((meta / "layout.json").read_text())
    (meta / "layout.json").write_text(json.dumps({**layout, "hash": "0123456789abcdef"}))
    for p in (meta / "done").glob("*.json"):
        p.write_text(json.dumps({**json.loads(p.read_text()), "hash": "0123456789abcdef"}))
    config = store.open().attrs["config"]
    config = json.loads(config) if isinstance(config, str) else config
    store.set_attrs(config={**config, "stats": {"permutations": 0, "block_size": 10, "fdr": 0.05}})
    before = store.done_info()
    # the default test now is the sign test: other settings, refused by name
    other = _config(tmp_path / "b.yaml", tiny_model, tmp_path / "out.zarr", revs)
    with pytest.raises(ValidationError, match=r"other settings \(stats.fdr: '\(unset\)' -> 0.05; stats.test: 'none' -> 'sign'\)"):
        run(other, progress=False)
    again = run(path, progress=False)  # the same settings: re-keyed, nothing redone
    new_hash = make_plan(path).settings_hash
    assert ResultsStore(again.path).done_info() == {k: {**v, "hash": new_hash} for k, v in before.items()}
