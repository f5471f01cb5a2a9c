"""Memorisation over training, for models trained by ``brainalign train-tiny``.

``train-tiny`` writes ``training_log.json`` beside its ``checkpoint-{step}`` folders: per
checkpoint the loss on fixed windows of the training stream and of the held-out tail of
the corpus, and their ``gap`` (held-out minus training loss: how much better the model
does on text it was trained on). :func:`memorisation_curves` puts those on a sweep's
checkpoints; :func:`training_corpus` describes the corpus and says which of the sweep's
stimulus stories it contains (by name and by text), so a report can state from data
whether the model was trained on the stories it is compared with the brain on.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ValidationError

log = logging.getLogger(__name__)

__all__ = ["find_training_log", "read_training_log", "memorisation_curves", "record_curves", "LOG_CURVES",
           "training_corpus", "story_overlap"]

LOG_NAME = "training_log.json"
#: words per shingle when looking for a story's text in the corpus
NGRAM = 8
#: a story "appears" in the corpus when at least this fraction of its shingles do
APPEARS = 0.5
_WORDS = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def find_training_log(folder: str | os.PathLike) -> Path | None:
    """The ``training_log.json`` in ``folder`` or the folder above it (None when neither has one)."""
    p = Path(folder).expanduser()
    for d in (p, p.parent):
        if (d / LOG_NAME).is_file():
            return d / LOG_NAME
    return None


def read_training_log(path: str | os.PathLike) -> dict:
    """A training log, checked: a dict with a ``checkpoints`` list of records."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"training log {p} cannot be read: {exc}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("checkpoints"), list):
        raise ValidationError(f"training log {p} has no 'checkpoints' list; is it a train-tiny training_log.json?")
    for rec in data["checkpoints"]:
        missing = {"name", "train_loss", "heldout_loss"} - set(rec)
        if missing:
            raise ValidationError(f"training log {p}: a checkpoint record lacks {sorted(missing)}")
    return dict(data)


#: curve variable -> its key in a checkpoint's record of a train-tiny log
LOG_CURVES = {"train_loss": "train_loss", "heldout_loss": "heldout_loss", "memorisation_gap": "gap",
              "train_acc": "train_acc", "heldout_acc": "heldout_acc", "memorisation": "memorisation",
              "weight_norm": "param_norm"}
#: the curves every train-tiny log has (accuracies: task runs only)
_EVERY_LOG = ("train_loss", "heldout_loss", "memorisation_gap")


def record_curves(rec: Mapping[str, Any] | None) -> dict[str, float]:
    """The :data:`LOG_CURVES` values of one checkpoint's log record (NaN where it has
    none); ``memorisation_gap`` is held-out minus training loss when the record has no ``gap``."""
    rec = rec or {}
    out = {var: float(rec[key]) if rec.get(key) is not None else np.nan for var, key in LOG_CURVES.items()}
    if rec.get("gap") is None:
        out["memorisation_gap"] = out["heldout_loss"] - out["train_loss"]
    return out


def memorisation_curves(folders: Mapping[str, str | os.PathLike], tokens: Mapping[str, float] | None = None):
    """``train_loss``, ``heldout_loss`` and ``memorisation_gap`` (held-out minus training
    loss) over checkpoints, from the training logs of the checkpoint folders; for task
    runs (``train-tiny --task``) also ``train_acc``, ``heldout_acc`` and ``memorisation``
    (training minus held-out accuracy); ``weight_norm`` (the log's ``param_norm``).

    ``folders``: checkpoint label -> its folder. A checkpoint is found in its log by its
    folder name. Returns an xarray Dataset over ``checkpoint`` (NaN where a checkpoint
    is not in a log) with ``step`` and ``tokens`` coordinates (``tokens`` wins over the
    log's), ``log`` attribute; None when no folder has a log.
    """
    import xarray as xr

    labels = list(folders)
    logs: dict[Path, dict] = {}
    rows = []
    for label in labels:
        path = find_training_log(folders[label])
        rec = None
        if path is not None:
            if path not in logs:
                logs[path] = read_training_log(path)
            name = Path(folders[label]).name
            rec = next((r for r in logs[path]["checkpoints"] if r["name"] in (name, label)), None)
        rows.append(rec or {})
    if not logs:
        return None

    def col(key):
        return np.array([float(r[key]) if r.get(key) is not None else np.nan for r in rows])

    vals = [record_curves(r) for r in rows]
    tok = col("tokens")
    if tokens is not None:
        tok = np.array([float(tokens.get(la, t)) for la, t in zip(labels, tok)])
    data = {var: ("checkpoint", np.array([v[var] for v in vals])) for var, key in LOG_CURVES.items()
            if var in _EVERY_LOG or any(r.get(key) is not None for r in rows)}
    ds = xr.Dataset(data, coords={"checkpoint": labels, "step": ("checkpoint", col("step")), "tokens": ("checkpoint", tok)})
    ds.attrs["log"] = ", ".join(map(str, logs))
    return ds


def _words(text: str) -> list[str]:
    return _WORDS.findall(text.lower().replace("\u2019", "'"))


def _shingles(words: Sequence[str], n: int = NGRAM) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(max(len(words) - n + 1, 0))}


def story_overlap(stories: Mapping[str, Any], corpus_texts: Sequence[str], n: int = NGRAM) -> dict[str, float]:
    """Per story (name -> text or words), the fraction of its ``n``-word shingles that occur in the corpus."""
    corpus: set[tuple[str, ...]] = set()
    for t in corpus_texts:
        corpus |= _shingles(_words(t), n)
    out = {}
    for name, text in stories.items():
        sh = _shingles(_words(text if isinstance(text, str) else " ".join(text)), n)
        out[str(name)] = float(len(sh & corpus) / len(sh)) if sh else float("nan")
    return out


def _corpus_texts(corpus: Mapping[str, Any]) -> list[str] | None:
    """The corpus's texts, when its source (a folder of files, or a file) is on this machine."""
    src = corpus.get("source")
    if not src or src == "texts":
        return None
    p = Path(src)
    if p.is_dir():
        files = [p / f for f in corpus.get("files") or []] or sorted(p.rglob("*.txt"))
    elif p.is_file():
        files = [p]
    else:
        return None
    try:
        return [f.read_text(encoding="utf-8", errors="replace") for f in files if f.is_file()]
    except OSError:
        return None


def training_corpus(log_path: str | os.PathLike, stories: Mapping[str, Any] | None = None) -> dict:
    """What a train-tiny model was trained on, and whether the stimulus stories were in it.

    Returns a dict: ``log`` (the file), ``source``, ``files``, ``documents``, ``words``
    (the log's corpus description), ``tokens_per_step``, ``complete``; with ``stories``
    (name -> text or words): ``stories`` (their names), ``overlap`` (story -> fraction
    of its 8-word shingles found in the corpus; None when the corpus texts are not on
    this machine), ``named`` (stories whose name is a corpus file's name),
    ``stories_in_corpus`` (named, or overlap >= 0.5), ``disjoint`` (no story in the
    corpus), ``checked`` ("text and names" or "names only").
    """
    data = read_training_log(log_path)
    corpus = dict(data.get("corpus") or {})
    out = {"log": str(log_path), "source": corpus.get("source"), "files": list(corpus.get("files") or []),
           "documents": corpus.get("documents"), "words": corpus.get("words"),
           "tokens_per_step": data.get("tokens_per_step"), "complete": bool(data.get("complete"))}
    if stories is None:
        return out
    stems = {Path(f).stem.lower() for f in out["files"]}
    named = sorted(s for s in stories if str(s).lower() in stems)
    texts = _corpus_texts(corpus)
    overlap = story_overlap(stories, texts) if texts is not None else None
    inside = set(named) | ({s for s, f in overlap.items() if f >= APPEARS} if overlap else set())
    out.update(stories=sorted(map(str, stories)), overlap=overlap, named=named,
               stories_in_corpus=sorted(inside), disjoint=not inside,
               checked="text and names" if texts is not None else "names only")
    return out
