"""A results store is data: the report and flatmaps read it, never write into it or
beside it, and never run model code because the config saved in it asks to."""

import json
import logging
import shutil
import stat
from pathlib import Path

import pytest
import transformers
import xarray as xr

from brainalign.config import cache_dir
from brainalign.sweep import Sweep, run
from brainalign.sweep.analyze import flatmap_from_store, internal_state_curves, report


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """A finished sweep of a tiny GPT-NeoX (3 checkpoints) on a fsaverage5
    simulation, whose saved config says ``model.trust_remote_code: true``."""
    from brainalign.datasets import _corpus
    from brainalign.training import train_tiny

    root = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before the per-test cache is set
        mp.setenv("BRAINALIGN_CACHE", str(root / "cache"))
        mp.setenv("BRAINALIGN_DATA", str(root / "data"))
        tiny = train_tiny(_corpus.stories_dir(), root / "model", n_layers=2, hidden=32, heads=2, seq_len=32,
                          steps=20, batch_size=4, checkpoints=3, seed=0)
        cfg = {
            "dataset": {"name": "simulated",
                        "options": {"space": "fsaverage5", "stories": 4, "features": "random:8", "n_subjects": 2, "snr": 2.0}},
            "model": {"name": str(tiny.out_dir), "trust_remote_code": True},
            "layers": "all",
            "features": {"context_tokens": 32, "batch_size": 8},
            "encoding": {"alphas": {"logspace": [0, 4, 5]}, "n_folds": 3},
            "output": {"store": str(root / "results.zarr")},
        }
        run(cfg, progress=False)
    return root / "results.zarr", tiny.out_dir


def _received(store: Path, where: Path) -> Path:
    """A copy of ``store``, as if received from someone else."""
    copy = where / "received" / store.name
    shutil.copytree(store, copy)
    return copy


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its mtime and size."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*"))}


def _read_only(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _writable(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.fixture
def spy_from_pretrained(monkeypatch):
    """Record the keyword arguments of every transformers Auto*.from_pretrained call
    (the real loader still runs)."""
    calls = []
    for cls in (transformers.AutoConfig, transformers.AutoModel, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        original = cls.from_pretrained

        def spy(*args, _original=original, _name=cls.__name__, **kwargs):
            calls.append((_name, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    return calls


def test_report_of_a_read_only_store_writes_nothing_into_or_beside_it(tmp_path, sweep_store):
    store = _received(sweep_store[0], tmp_path)
    _read_only(store)  # root ignores these bits: the snapshots below are the real check
    before_store, before_tmp = _tree(store), _tree(tmp_path)
    try:
        html_path = report(store, tmp_path / "out" / "report.html")
        last = str(Sweep(store).results.checkpoint.values[-1])
        png = flatmap_from_store(store, checkpoint=last, layer=1, out=tmp_path / "out" / "map.png")
    finally:
        after_store, after_tmp = _tree(store), _tree(tmp_path)
        _writable(store)
    assert after_store == before_store, "the report changed the results store"
    new = sorted(set(after_tmp) - set(before_tmp))
    assert new and all(p == "out" or p.startswith("out/") for p in new), f"written outside the report's folder: {new}"
    assert set(new) - {"out/report_movie.mp4"} == {"out", "out/report.html", "out/report_movie.gif", "out/map.png"}
    html = html_path.read_text()
    assert "data:image/gif;base64," in html and ">Internal states</h2>" in html and ">Cortical maps</h2>" in html
    assert png.stat().st_size > 10_000
    # the internal states went to brainalign's cache, not into the store
    assert len(list((cache_dir() / "analysis").glob("*.zarr"))) == 1


def test_internal_states_are_cached_by_the_stores_done_markers(tmp_path, sweep_store, monkeypatch):
    store = _received(sweep_store[0], tmp_path)
    first = internal_state_curves(store)
    assert first is not None and first.sizes["checkpoint"] == 3

    import brainalign.dynamics.internal as internal

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although the store did not change")

    monkeypatch.setattr(internal, "internal_states", fail)
    xr.testing.assert_allclose(internal_state_curves(store), first)

    # a region redone (its marker rewritten) is a new cache entry
    marker = sorted((store / ".brainalign" / "done").glob("*.json"))[-1]
    info = json.loads(marker.read_text())
    marker.write_text(json.dumps({**info, "finished": "later"}))
    with pytest.raises(AssertionError, match="recomputed"):
        internal_state_curves(store)
    assert not (store / "analysis").exists()


def test_stored_trust_remote_code_is_not_granted_by_the_store(tmp_path, sweep_store, spy_from_pretrained, caplog):
    store = _received(sweep_store[0], tmp_path)
    with caplog.at_level(logging.WARNING, logger="brainalign"):
        html = report(store, tmp_path / "report.html").read_text()
    assert spy_from_pretrained, "the report loaded no model: the check below would be empty"
    granted = [(name, kw) for name, kw in spy_from_pretrained if kw.get("trust_remote_code")]
    assert not granted, f"remote code allowed by the store's config: {granted}"
    assert "--trust-remote-code" in caplog.text
    assert ">Internal states</h2>" in html  # this model needs no remote code: still shown

    # the caller can grant it
    spy_from_pretrained.clear()
    report(store, tmp_path / "trusted.html", trust_remote_code=True)
    assert any(kw.get("trust_remote_code") for _, kw in spy_from_pretrained)


def test_model_code_named_by_a_received_store_never_runs(tmp_path, sweep_store, caplog):
    store, model = sweep_store
    store = _received(store, tmp_path)
    # the checkpoints the store's config names now carry code that would leave a trace
    evil = tmp_path / "evil-model"
    shutil.copytree(model, evil)
    sentinel = tmp_path / "remote-code-ran"
    for conf in evil.glob("*/config.json"):
        c = json.loads(conf.read_text())
        c.update(model_type="evil_neox", auto_map={k: "evil.Evil" for k in ("AutoConfig", "AutoModel", "AutoModelForCausalLM")})
        conf.write_text(json.dumps(c))
        (conf.parent / "evil.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n")
    attrs_file = store / ".zattrs"
    attrs = json.loads(attrs_file.read_text())
    cfg = json.loads(attrs["config"])
    assert cfg["model"]["trust_remote_code"] is True
    cfg["model"]["name"] = str(evil)
    attrs["config"] = json.dumps(cfg)
    attrs_file.write_text(json.dumps(attrs))

    with caplog.at_level(logging.WARNING, logger="brainalign"):
        html = report(store, tmp_path / "report.html").read_text()
    assert not sentinel.exists(), "the store's model code ran"
    assert "internal states skipped" in caplog.text
    assert ">Internal states</h2>" not in html and ">Alignment over training and phase transitions</h2>" in html


def _bind_read_only(src: Path, dst: Path) -> None:
    """``dst``: ``src`` on a real read-only mount (root ignores permission bits)."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    dst.mkdir(parents=True)
    for cmd in (["mount", "--bind", str(src), str(dst)], ["mount", "-o", "remount,ro,bind", str(dst)]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            subprocess.run(["umount", str(dst)], capture_output=True)
            pytest.skip(f"cannot make a read-only bind mount here: {r.stderr.strip()}")


def test_cli_report_and_flatmap_on_a_read_only_mount(sweep_store, tmp_path, capsys):
    import subprocess

    from brainalign.cli import main

    store, _ = sweep_store
    ro = tmp_path / "mnt" / store.name
    _bind_read_only(store, ro)
    try:
        with pytest.raises(OSError, match="Read-only file system"):
            (ro / "probe").write_text("x")
        before = _tree(ro)
        assert main(["report", str(ro), "-o", str(tmp_path / "out" / "report.html")]) == 0
        assert main(["flatmap", str(ro), "--checkpoint", "checkpoint-0", "--layer", "1", "-o", str(tmp_path / "map.png")]) == 0
        assert _tree(ro) == before
        assert sorted(p.name for p in (tmp_path / "mnt").iterdir()) == [store.name]  # nothing beside the store
    finally:
        subprocess.run(["umount", str(ro)], check=False)
    assert (tmp_path / "out" / "report.html").stat().st_size > 0 and (tmp_path / "map.png").stat().st_size > 0


def test_cli_flatmap_of_a_store_with_a_deleted_chunk_fails_and_names_it(sweep_store, tmp_path, capsys):
    from brainalign.cli import main

    store = _received(sweep_store[0], tmp_path)
    chunk = next(p for p in sorted((store / "score").iterdir()) if p.name.startswith("1."))
    chunk.unlink()
    rc = main(["flatmap", str(store), "--checkpoint", "checkpoint-0", "--layer", "1", "-o", str(tmp_path / "map.png")])
    err = capsys.readouterr().err
    assert rc == 2 and f"chunk file(s) score/{chunk.name}" in err and "are missing" in err, err
    assert not (tmp_path / "map.png").exists()


def test_report_and_flatmap_leave_matplotlib_as_they_found_it(tmp_path, sweep_store):
    """No backend switch, no closing of the user's figures (issue 15)."""
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    plt.switch_backend("svg")  # a backend report() would have replaced with Agg
    try:
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        open_before = plt.get_fignums()
        report(sweep_store[0], tmp_path / "report.html", internal=False, movie=False)
        last = str(Sweep(sweep_store[0]).results.checkpoint.values[-1])
        flatmap_from_store(sweep_store[0], checkpoint=last, layer=1, out=tmp_path / "map.png")
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == open_before and fig.number in open_before  # the user's figure is open, none added
        assert plt.gcf() is fig and len(ax.lines) == 1
    finally:
        plt.close(fig)
        plt.switch_backend(before)
