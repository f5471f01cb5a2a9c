"""The dataset adapter registry: one dictionary, one dispatch, a documented contract."""

from pathlib import Path

import numpy as np
import pytest

from brainalign import DataNotFoundError, ValidationError
from brainalign import datasets
from brainalign.cli import main
from brainalign.datasets import Dataset, DatasetAdapter, UnknownSubjectError, register_dataset
from brainalign.stimulus import Responses, Space, Story


class ToyAdapter:
    """Two subjects listening to one story each way round; what the README shows."""

    SUBJECTS = ("t1", "t2")

    def load(self, root, subjects=None, n_trs=6, test="b"):
        if root is None:
            raise ValidationError("toy: root= is required")
        subjects = list(subjects) if subjects is not None else list(self.SUBJECTS)
        unknown = [s for s in subjects if s not in self.SUBJECTS]
        if unknown:
            raise UnknownSubjectError(f"toy: no subject {unknown[0]!r} (subjects: {', '.join(self.SUBJECTS)})")
        stories = [Story(n, ["one", "two", "three"], [0.5, 1.5, 2.5], [1.0, 2.0, 3.0], 2.0, np.arange(n_trs) * 2.0 + 1)
                   for n in ("a", "b")]
        data = {(s, st.name): (lambda k=i: np.full((n_trs, 3), k, np.float32)) for i, s in enumerate(subjects)
                for st in stories}
        return Dataset("toy", stories, subjects, Space(name="toy3", kind="surface", hemi_sizes=(1, 2)),
                       Responses(data), [s.name for s in stories if s.name != test], [test], info={"root": root})

    def check(self, root, subjects=None):
        root = Path(root)
        ok = (root / "ok").is_file()
        return {"present": ["ok"] if ok else [], "missing": [] if ok else ["ok"], "not_downloaded": [], "ok": ok,
                "command": None if ok else f"touch {root / 'ok'}"}


@pytest.fixture
def registry(monkeypatch):
    """The registry as it was, after the test."""
    monkeypatch.setattr(datasets, "REGISTRY", dict(datasets.REGISTRY))
    return datasets.REGISTRY


def test_a_toy_adapter_through_the_registry(registry, tmp_path, capsys):
    assert isinstance(ToyAdapter(), DatasetAdapter)
    register_dataset("toy", ToyAdapter())
    assert datasets.available()["toy"] == "Two subjects listening to one story each way round; what the README shows."
    ds = datasets.load("toy", tmp_path, subjects=["t2"], n_trs=5)
    assert ds.subjects == ["t2"] and ds.test_stories == ["b"] and ds.info["root"] == tmp_path
    np.testing.assert_array_equal(ds.responses("t2", "a"), np.zeros((5, 3), np.float32))
    with pytest.raises(ValidationError, match=r"dataset 'toy': unknown option\(s\) 'n_tr'; it accepts: n_trs, test"):
        datasets.load("toy", tmp_path, n_tr=5)
    with pytest.raises(UnknownSubjectError, match="toy: no subject 't9'"):
        datasets.load("toy", tmp_path, subjects=["t9"])
    # the command line dispatches by name too
    assert main(["datasets", "list"]) == 0
    assert "toy  " in capsys.readouterr().out
    assert main(["datasets", "check", "toy", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "missing: 1 files" in out and f"touch {tmp_path / 'ok'}" in out
    (tmp_path / "ok").write_text("")
    assert main(["datasets", "check", "toy", str(tmp_path)]) == 0
    assert "everything needed is present" in capsys.readouterr().out


def test_register_a_function_or_a_module_path(registry, tmp_path, capsys):
    def load(root, subjects=None):
        """Toy data, from a bare function."""
        return ToyAdapter().load(root, subjects)

    register_dataset("toyfn", load)
    assert datasets.available()["toyfn"] == "Toy data, from a bare function."
    assert datasets.load("toyfn", tmp_path).subjects == ["t1", "t2"]
    assert main(["datasets", "check", "toyfn", str(tmp_path)]) == 0
    assert "nothing to check" in capsys.readouterr().out
    register_dataset("sim2", "brainalign.datasets.simulated", "the simulation again, by module path")
    ds = datasets.load("sim2", subjects=["sim02"], n_subjects=2, stories=2, space=40, features="random:3")
    assert ds.subjects == ["sim02"] and type(ds).__name__ == "SimulatedDataset"
    with pytest.raises(ValidationError, match="already registered"):
        register_dataset("toyfn", load)
    register_dataset("toyfn", ToyAdapter(), "replaced", replace=True)
    assert datasets.available()["toyfn"] == "replaced"
    with pytest.raises(ValidationError, match="must have a load"):
        register_dataset("nothing", object())


def test_unknown_names_and_subjects_are_named(capsys):
    with pytest.raises(ValidationError, match="unknown dataset 'nosuch'; known: lebel2023, narratives"):
        datasets.load("nosuch")
    assert main(["datasets", "check", "nosuch", "."]) == 2
    assert "unknown dataset 'nosuch'" in capsys.readouterr().out
    # an unknown subject: UnknownSubjectError, both a ValidationError and a KeyError
    with pytest.raises(UnknownSubjectError, match="dataset 'simulated' has no subject 'sim07'") as info:
        datasets.load("simulated", subjects=["sim07"], n_subjects=2, stories=2, space=40, features="random:3")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValidationError)
    assert str(info.value).startswith("dataset 'simulated'")  # not KeyError's quoted repr
    assert not issubclass(UnknownSubjectError, DataNotFoundError)
