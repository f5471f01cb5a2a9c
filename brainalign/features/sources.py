"""Word feature sources: callables ``Story -> (n_words x d)`` array.

A feature source is what :func:`brainalign.datasets.simulate` drives its responses with
(it takes any such callable, and resolves the name ``"minilm:<layer>"`` to
:func:`minilm_features`). :func:`minilm_features` reads the packaged pretrained MiniLM
causally, word by word, cheaply enough for a CPU.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import config
from .._io import atomic_save_npy
from ..stimulus import Story
from .loading import minilm_path

__all__ = ["FeatureSource", "minilm_features"]

FeatureSource = Callable[[Story], np.ndarray]


def minilm_features(
    layer: int = 3, context: int = 16, batch_size: int = 64, cache: bool = True, use_extract: bool = False
) -> FeatureSource:
    """Hidden states of the packaged pretrained MiniLM (all-MiniLM-L6-v2) at ``layer``.

    Reads each word with up to ``context`` words of left context (no right context:
    the features are causal) and keeps the state of its last token; this takes a few
    seconds per story on a CPU. ``use_extract=True`` goes through :func:`extract`
    instead (its defaults use long left-context token windows, minutes per story on a
    CPU). Results are cached per story under brainalign's cache folder
    (``cache_dir()/simulated``, written atomically).
    """

    def source(story: Story) -> np.ndarray:
        path = minilm_path()
        key = hashlib.sha256(
            json.dumps([str(path), layer, context, use_extract, story.words]).encode("utf-8")
        ).hexdigest()[:24]
        cfile = config.cache_dir() / "simulated" / f"minilm-{story.name}-{key}.npy"
        if cache and cfile.is_file():
            return np.load(cfile, allow_pickle=False)
        if use_extract:
            arr = _minilm_by_extract(story, path, layer)
        else:
            arr = _minilm_causal(story, path, layer, context, batch_size)
        if cache:
            atomic_save_npy(cfile, arr)
        return arr

    source.description = f"all-MiniLM-L6-v2 layer {layer} of 6, {context} words of left context"  # type: ignore[attr-defined]
    return source


def _minilm_by_extract(story: Story, path: Path, layer: int) -> np.ndarray:
    from .extraction import extract

    wf = extract([story], model=str(path), layers=[layer])
    return np.asarray(wf.get(story.name, layer), dtype=np.float32)


def _minilm_causal(story: Story, path: Path, layer: int, context: int, batch_size: int) -> np.ndarray:
    """Each word read with up to ``context`` words before it; the state of its last token."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True)
    model.eval()
    if hasattr(model, "encoder") and hasattr(model.encoder, "layer") and layer >= 1:
        model.encoder.layer = model.encoder.layer[:layer]  # later blocks cannot change hidden_states[layer]
    words = list(story.words)
    out = np.zeros((len(words), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for a in range(0, len(words), batch_size):
            idx = range(a, min(a + batch_size, len(words)))
            windows = [words[max(0, i - context) : i + 1] for i in idx]
            enc = tok(windows, is_split_into_words=True, return_tensors="pt", padding=True, truncation=True, max_length=256)
            hs = model(**enc, output_hidden_states=True).hidden_states[layer]
            for j, i in enumerate(idx):
                wids = enc.word_ids(j)
                last = max(t for t, w in enumerate(wids) if w == len(windows[j]) - 1)
                out[i] = hs[j, last].numpy()
    return out

