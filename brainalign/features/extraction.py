"""``extract()``: hidden states of every layer, aligned to the words of the stories.

One model load per call (one checkpoint), one forward pass per context window for all
layers (``output_hidden_states``), features cached on disk per (story, layer).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import ValidationError
from ..stimulus import Story
from .align import Alignment, align_words, special_tokens
from .base import WordFeatures, design
from .cache import FeatureCache, StoryEntry, tokenizer_key
from .loading import check_device, load_model, resolve_device, resolve_source
from .revisions import parse_revision
from .windows import Window, causal_windows, encoder_windows, tokens_processed

__all__ = ["extract", "extract_options", "Features", "extract_story", "effective_window"]

log = logging.getLogger(__name__)

WORD_STATES = ("last", "mean")


class Features(WordFeatures):
    """:class:`WordFeatures` returned by :func:`extract`, with a design-matrix helper.

    ``info`` holds how they were made: ``commit``, ``kind``, ``context_tokens`` (the
    effective window), ``stride``, ``word_state``, ``dtype``, ``device``,
    ``stimulus_tokens``, ``tokens_processed``, ``cache_hits``, ``dataset``.
    """

    def __init__(self, *args: Any, story_objs: Mapping[str, Story] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._story_objs = dict(story_objs or {})  # name -> Story, so design() takes names

    def design(self, stories: Any, layer: int, delays: Sequence[int] = (1, 2, 3, 4), **kwargs: Any) -> np.ndarray:
        """Lanczos-resampled, per-story z-scored, delayed design of ``layer`` for ``stories``
        (a Dataset, Story objects, or their names when the features came from a Dataset)."""
        stories = _stories_of(stories, self._story_objs)
        return design(self, stories, layer=layer, delays=delays, **kwargs)


def _stories_of(source: Any, known: Mapping[str, Story] | None = None) -> list[Story]:
    if hasattr(source, "stories") and isinstance(getattr(source, "stories"), Mapping):
        return list(source.stories.values())
    if isinstance(source, Story):
        return [source]
    if isinstance(source, (str, bytes)) or not isinstance(source, Sequence):
        raise ValidationError(
            f"source must be a Dataset or a list of Story objects, got {type(source).__name__}"
        )
    out = []
    for s in source:
        if isinstance(s, Story):
            out.append(s)
        elif isinstance(s, str) and known and s in known:
            out.append(known[s])
        else:
            raise ValidationError(f"source must hold Story objects, got {type(s).__name__} ({s!r})")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValidationError(f"source has duplicate story names: {sorted({n for n in names if names.count(n) > 1})}")
    if not out:
        raise ValidationError("source holds no stories")
    return out


def _max_positions(config) -> int | None:
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _forward(model, kind: str, ids, n_keep: int):
    """One batched forward pass -> (hidden_states tuple, logits of the last n_keep positions or None)."""
    if kind == "causal":
        try:
            out = model(input_ids=ids, output_hidden_states=True, use_cache=False, logits_to_keep=n_keep)
        except TypeError:
            out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        logits = out.logits[:, -n_keep:] if out.logits.shape[1] > n_keep else out.logits
        return out.hidden_states, logits
    out = model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states, None


class _StoryAccumulator:
    """What :func:`extract_story` gathers from each window's forward pass.

    Per word: the last token's state (``word_state="last"``) or the sum of its tokens'
    states and their count (``"mean"``); per layer: the sum of the L2 norms of the
    token states computed; causal models: the summed next-token loss.
    """

    def __init__(self, al: Alignment, kind: str, layers: Sequence[int], word_state: str, n_prefix: int, n_all: int,
                 ids_all, device) -> None:
        import torch

        self.al, self.kind, self.layers, self.word_state, self.P = al, kind, list(layers), word_state, n_prefix
        self.ids_all, self.device = ids_all, device
        self.feats: dict = {}  # layer -> (n_words x hidden) tensor, made at the first batch
        self.counts = torch.zeros(al.n_words, dtype=torch.float32, device=device)
        self.norm_sum = torch.zeros(n_all, dtype=torch.float64, device=device)
        self.norm_n = 0
        self.loss_sum, self.loss_n = 0.0, 0
        if word_state == "mean":  # (token, word) pairs
            self.pair_tok = np.concatenate([al.word_tokens(i) for i in range(al.n_words)])
            self.pair_word = np.concatenate(
                [np.full(al.word_last[i] - al.word_first[i] + 1, i) for i in range(al.n_words)]
            )

    def add(self, batch: Sequence[Window], hs, logits) -> None:
        """Take in one batch of windows: ``hs`` every layer's states, ``logits`` or None."""
        import torch

        if not self.feats:
            hidden = hs[0].shape[-1]
            self.feats = {
                l: torch.zeros(self.al.n_words, hidden, dtype=torch.float32, device=self.device) for l in self.layers
            }
        for b, w in enumerate(batch):
            lo, hi = self.P + w.out - w.start, self.P + w.end - w.start  # output positions in the window
            for l in range(self.norm_sum.shape[0]):
                self.norm_sum[l] += hs[l][b, lo:hi].float().norm(dim=-1).sum().double()
            self.norm_n += hi - lo
            if self.word_state == "last":
                self._add_last(hs, b, w)
            else:
                self._add_mean(hs, b, w)
            if logits is not None:
                self._add_loss(logits, b, w)

    def _add_last(self, hs, b: int, w: Window) -> None:
        import torch

        al = self.al
        if self.kind == "causal":
            words = np.arange(np.searchsorted(al.word_last, w.out, "left"), np.searchsorted(al.word_last, w.end, "left"))
        else:
            words = np.flatnonzero(al.word_last == w.end - 1)
        if words.size:
            pos = torch.as_tensor(self.P + al.word_last[words] - w.start, device=self.device)
            widx = torch.as_tensor(words, device=self.device)
            for l in self.layers:
                self.feats[l][widx] = hs[l][b, pos].float()

    def _add_mean(self, hs, b: int, w: Window) -> None:
        import torch

        pair_tok, pair_word = self.pair_tok, self.pair_word
        if self.kind == "causal":
            sel = (pair_tok >= w.out) & (pair_tok < w.end)
        else:
            wd = np.flatnonzero(self.al.word_last == w.end - 1)
            sel = np.isin(pair_word, wd) & (pair_tok >= w.out) & (pair_tok < w.end)
        if sel.any():
            pos = torch.as_tensor(self.P + pair_tok[sel] - w.start, device=self.device)
            widx = torch.as_tensor(pair_word[sel], device=self.device)
            for l in self.layers:
                self.feats[l].index_add_(0, widx, hs[l][b, pos].float())
            self.counts.index_add_(0, widx, torch.ones(widx.numel(), device=self.device))

    def _add_loss(self, logits, b: int, w: Window) -> None:
        import torch.nn.functional as F

        # logits at output token p predict token p + 1
        n_out = w.n_out
        tgt_hi = min(w.end + 1, self.al.n_tokens)
        n_pred = tgt_hi - (w.out + 1)
        if n_pred > 0:
            lg = logits[b, logits.shape[1] - n_out : logits.shape[1] - n_out + n_pred].float()
            tgt = self.ids_all[w.out + 1 : tgt_hi]
            self.loss_sum += float(F.cross_entropy(lg, tgt, reduction="sum"))
            self.loss_n += n_pred

    def arrays(self) -> dict[int, np.ndarray]:
        feats = self.feats
        if self.word_state == "mean":
            c = self.counts.clamp(min=1).unsqueeze(1)
            feats = {l: v / c for l, v in feats.items()}
        return {l: v.cpu().numpy() for l, v in feats.items()}

    def metrics(self, tokens_processed: int) -> dict:
        return {
            "n_tokens": self.al.n_tokens,
            "tokens_processed": tokens_processed,
            "norm_sum": {str(l): float(self.norm_sum[l]) for l in range(self.norm_sum.shape[0])},
            "norm_count": int(self.norm_n),
            "loss": (self.loss_sum / self.loss_n) if self.loss_n else None,
            "loss_tokens": int(self.loss_n),
        }


def extract_story(
    model,
    tokenizer,
    kind: str,
    story: Story,
    layers: Sequence[int],
    *,
    context_tokens: int,
    stride: int | None,
    word_state: str = "last",
    batch_size: int = 4,
    progress: bool | None = None,
    alignment: Alignment | None = None,
) -> tuple[dict[int, np.ndarray], dict]:
    """Features of one story with a loaded model: ({layer: (n_words, hidden)}, metrics).

    ``context_tokens`` is the window length in story tokens (special tokens the tokenizer
    adds, such as BOS or CLS/SEP, come on top).
    """
    import torch
    from tqdm.auto import tqdm

    al = alignment or align_words(story.words, tokenizer, story=story.name)
    prefix, suffix = special_tokens(tokenizer)
    if kind == "causal":
        suffix = []
        wins = causal_windows(al.n_tokens, context_tokens, stride)
    else:
        wins = encoder_windows(al.word_first, al.word_last, context_tokens)
    device = next(model.parameters()).device
    ids_all = torch.as_tensor(al.input_ids, device=device)
    acc = _StoryAccumulator(al, kind, layers, word_state, len(prefix), model.config.num_hidden_layers + 1, ids_all,
                            device)
    pre = torch.as_tensor(prefix, dtype=torch.long, device=device)
    suf = torch.as_tensor(suffix, dtype=torch.long, device=device)
    with torch.inference_mode():
        for batch in tqdm(_batches(wins, batch_size), desc=story.name, leave=False,
                          disable=None if progress is None else not progress):
            ids = torch.stack([torch.cat([pre, ids_all[w.start : w.end], suf]) for w in batch])
            hs, logits = _forward(model, kind, ids, max(w.n_out for w in batch))
            acc.add(batch, hs, logits)
            del hs, logits
    return acc.arrays(), acc.metrics(tokens_processed(wins) + len(wins) * (len(prefix) + len(suffix)))


def _batches(wins: Sequence[Window], batch_size: int) -> list[list[Window]]:
    """Windows grouped by length (one tensor per batch), ``batch_size`` at most per batch."""
    by_len: dict[int, list[Window]] = {}
    for w in wins:
        by_len.setdefault(w.length, []).append(w)
    return [ws[i : i + batch_size] for ws in by_len.values() for i in range(0, len(ws), batch_size)]


def _resolve_layers(layers: Any, n_layers: int) -> list[int]:
    if isinstance(layers, str):
        if layers != "all":
            raise ValidationError(f"layers must be 'all' or a list of ints, got {layers!r}")
        return list(range(n_layers + 1))
    if isinstance(layers, (int, np.integer)):
        layers = [layers]
    out = []
    for layer in layers:
        if not isinstance(layer, (int, np.integer)):
            raise ValidationError(f"layers must be integers, got {layer!r}")
        v = int(layer) + (n_layers + 1 if layer < 0 else 0)
        if not 0 <= v <= n_layers:
            raise ValidationError(f"layer {layer} out of range: the model has layers 0..{n_layers}")
        out.append(v)
    return sorted(set(out))


def extract(
    source: Any,
    model: str | os.PathLike | None = None,
    revision: str | None = None,
    layers: str | Sequence[int] = "all",
    context_tokens: int = 512,
    batch_size: int | None = None,
    device: str = "auto",
    dtype: Any = "auto",
    cache: bool | str | os.PathLike | FeatureCache = True,
    *,
    stride: int | None = None,
    word_state: str = "last",
    kind: str = "auto",
    cache_dtype: str = "float32",
    hf_cache_dir: str | os.PathLike | None = None,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
    use_safetensors: bool | None = None,
    tokens_per_step: float | None = None,
    revision_map: Mapping[str, Mapping[str, Any]] | Callable[[str], Any] | None = None,
    training: Mapping[str, Any] | None = None,
    dataset_name: str | None = None,
    before_load: Callable[[], None] | None = None,
    progress: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    word_reduction: str | None = None,
) -> Features:
    """Word-level hidden states of every requested layer of one checkpoint.

    Parameters
    ----------
    source : Dataset or list of Story
        The stories. Each is read on its own: no context crosses stories.
    model : str or path
        Hub id (``"EleutherAI/pythia-160m"``), or a local folder: one checkpoint
        (``/runs/x/checkpoint-100``) or a folder of checkpoints (then ``revision`` names
        the sub-folder). :func:`minilm_path` is the packaged pretrained MiniLM.
    revision : str, optional
        Hub branch/tag/commit (``"step1000"``) or checkpoint sub-folder.
    layers : "all" or sequence of int
        0 is the embedding output, ``n_layers`` the last block (negative counts back).
    context_tokens : int
        Window length in tokens (capped by the model's positions). Causal models read
        strided windows: each token's state is computed once with at least
        ``context_tokens - stride`` tokens of left context. Encoders read, for each word,
        the ``context_tokens`` tokens ending at it (left context only).
    batch_size : int, optional
        Windows per forward pass (default 16 on GPU, 4 on CPU).
    device, dtype : "auto" or explicit
        "auto": CUDA with bfloat16 when available, else CPU float32. A device is one of
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` (or a ``torch.device`` of these).
    cache : bool, path or FeatureCache
        Use brainalign's on-disk feature cache (default location
        ``brainalign.config.cache_dir()/features``).
    stride : int, optional
        New tokens per causal window (default ``context_tokens // 2``, at most that).
    word_state : {"last", "mean"}
        A word's feature: its last token's state, or the mean of its tokens' states.
    kind : {"auto", "causal", "encoder"}
    cache_dtype : {"float32", "float16"}
        Storage type in the feature cache.
    hf_cache_dir : path, optional
        The Hugging Face hub cache to load checkpoints from (``from_pretrained(cache_dir=)``);
        not brainalign's own cache (``cache=``).
    tokenizer : str, path or tokenizer, optional
        Overrides the checkpoint's own tokenizer.
    trust_remote_code : bool
        Off unless asked.
    use_safetensors : bool, optional
        ``None`` prefers safetensors, ``True`` requires them.
    tokens_per_step, revision_map, training :
        Training axis: parser option, user mapping, or an explicit
        ``{"step": ..., "tokens": ...}`` (see :func:`parse_revision`).
    dataset_name : str, optional
        Name used in the cache key for a list of stories (a Dataset's own name otherwise).
    before_load : callable, optional
        Called (no arguments) just before the model is loaded, only when some story is
        not in the cache: a sweep fetches the revision's weights there.
    progress : bool, optional
        tqdm progress bars (default: when attached to a terminal).
    cache_dir, word_reduction :
        Deprecated names of ``hf_cache_dir`` and ``word_state`` (a DeprecationWarning).

    Returns
    -------
    Features
        A :class:`WordFeatures` with ``training`` and ``metrics`` filled: ``loss``
        (story -> mean next-token loss in nats, causal models), ``mean_loss``,
        ``activation_norm`` (layer -> mean L2 norm of the token states computed).
    """
    # 1. validate
    hf_cache_dir = _renamed("cache_dir", cache_dir, "hf_cache_dir", hf_cache_dir)
    word_state = _renamed("word_reduction", word_reduction, "word_state", word_state, default="last")
    stories = _stories_of(source)
    dataset = dataset_name or (getattr(source, "name", None) if hasattr(source, "stories") else None) or "stories"
    _check_options(word_state=word_state, device=device, cache_dtype=cache_dtype, context_tokens=context_tokens,
                   batch_size=batch_size)
    # 2. resolve: checkpoint, device, training axis, feature cache
    src = resolve_source(model, revision, hf_cache_dir)
    dev, dt = resolve_device(device, dtype)
    if batch_size is None:
        batch_size = 16 if dev.type == "cuda" else 4
    train = parse_revision("_", mapping={"_": dict(training)}) if training is not None else parse_revision(
        src.name, tokens_per_step=tokens_per_step, mapping=revision_map)
    settings = {  # what keys the cache, beside model, revision and commit
        "context_tokens": int(context_tokens), "stride": None if stride is None else int(stride),
        "word_state": word_state, "kind": kind, "dtype": str(dt).replace("torch.", ""),
        "tokenizer": tokenizer_key(tokenizer),
    }
    run = _Run(src, settings, dataset, _feature_cache(cache), cache_dtype)
    # 3. what the cache already holds
    want, missing = run.lookup(stories, layers)
    info: dict[str, Any] = {"dataset": dataset, "commit": src.commit, "cache_hits": len(stories) - len(missing)}
    # 4. the rest, one model load for all missing stories
    if missing:
        if before_load is not None:  # e.g. fetch the revision's weights: only when something must be computed
            before_load()
        mdl, tok, k = load_model(
            src, kind=kind, device=dev, dtype=dt, hf_cache_dir=hf_cache_dir, trust_remote_code=trust_remote_code,
            use_safetensors=use_safetensors, tokenizer=tokenizer,
        )
        try:
            want = run.compute(mdl, tok, k, [s for s in stories if s.name in missing], layers, info,
                               context_tokens=int(context_tokens), stride=stride, word_state=word_state,
                               batch_size=int(batch_size), device=dev, progress=progress)
        finally:
            del mdl
            _free_memory()
    # 5. assemble
    return run.features(stories, want, train, info)


def _renamed(old: str, old_value: Any, new: str, new_value: Any, default: Any = None) -> Any:
    """``new_value``, or ``old_value`` given under a deprecated keyword (with a DeprecationWarning)."""
    if old_value is None:
        return new_value
    warnings.warn(f"extract({old}=) is deprecated; use {new}=", DeprecationWarning, stacklevel=3)
    if new_value != default and str(Path(str(new_value))) != str(Path(str(old_value))):  # a folder or a name
        raise ValidationError(f"give {new}= (or the deprecated {old}=, the same thing), not two different values")
    return old_value


def _check_options(*, word_state: str, device: Any, cache_dtype: str, context_tokens: Any, batch_size: Any) -> None:
    if word_state not in WORD_STATES:
        raise ValidationError(f"word_state must be one of {WORD_STATES}, got {word_state!r}")
    check_device(device)
    if cache_dtype not in ("float32", "float16"):
        raise ValidationError(f"cache_dtype must be 'float32' or 'float16', got {cache_dtype!r}")
    if not isinstance(context_tokens, (int, np.integer)) or context_tokens < 2:
        raise ValidationError(f"context_tokens must be an integer >= 2, got {context_tokens!r}")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ValidationError(f"batch_size must be a positive integer, got {batch_size!r}")


def _feature_cache(cache: bool | str | os.PathLike | FeatureCache | None) -> FeatureCache | None:
    if isinstance(cache, FeatureCache):
        return cache
    if cache is True:
        return FeatureCache()
    if cache is False or cache is None:
        return None
    return FeatureCache(cache)


def effective_window(cfg, tok, kind: str, model: str, context_tokens: int, stride: int | None) -> tuple[int, int]:
    """(window length in story tokens, special tokens per window): ``context_tokens`` capped
    by the model's positions."""
    prefix, suffix = special_tokens(tok)
    n_special = len(prefix) + (0 if kind == "causal" else len(suffix))
    max_pos = _max_positions(cfg)
    ctx = int(context_tokens)
    if max_pos is not None and ctx + n_special > max_pos:
        log.warning(
            "context_tokens=%d does not fit %s (%d positions, %d special tokens): using %d",
            ctx, model, max_pos, n_special, max_pos - n_special,
        )
        ctx = max_pos - n_special
    if stride is not None and stride > ctx // 2:
        raise ValidationError(f"stride={stride} is more than half the effective window ({ctx} tokens)")
    return ctx, n_special


class _Run:
    """One :func:`extract` call's checkpoint, settings and cache: lookup, compute, assemble."""

    def __init__(self, src, settings: dict, dataset: str, fcache: FeatureCache | None, cache_dtype: str) -> None:
        self.src, self.settings, self.dataset, self.fcache, self.cache_dtype = src, settings, dataset, fcache, cache_dtype
        self.entries: dict[str, StoryEntry] = {}
        self.metas: dict[str, dict] = {}
        self.arrays: dict[tuple[str, int], np.ndarray] = {}  # in memory when there is no cache

    def _entry(self, story: Story, commit: str | None) -> StoryEntry:
        s = self.src
        return self.fcache.entry(s.model, s.revision, self.settings, self.dataset, story.name, story.words, commit)

    def lookup(self, stories: Sequence[Story], layers: Any) -> tuple[list[int] | None, list[str]]:
        """(layers wanted, when the cache knows the model's depth; stories to compute)."""
        missing = [s.name for s in stories]
        if self.fcache is None:
            return None, missing
        self.entries = {s.name: self._entry(s, self.src.commit) for s in stories}
        n_layers = next((int(e.meta["n_layers"]) for e in self.entries.values()
                         if e.meta and e.meta.get("n_layers") is not None), None)
        if n_layers is None:
            return None, missing
        want = _resolve_layers(layers, n_layers)
        return want, [s.name for s in stories if not self.entries[s.name].has(want, self.src.commit, self.cache_dtype)]

    def compute(self, mdl, tok, k: str, stories: Sequence[Story], layers: Any, info: dict, *, context_tokens: int,
                stride: int | None, word_state: str, batch_size: int, device, progress: bool | None) -> list[int]:
        """Extract ``stories`` with the loaded model, store them; fills ``info``; returns the layers."""
        cfg = mdl.config
        n_layers = int(cfg.num_hidden_layers)
        want = _resolve_layers(layers, n_layers)
        commit = self.src.commit or getattr(cfg, "_commit_hash", None)
        ctx, n_special = effective_window(cfg, tok, k, self.src.model, context_tokens, stride)
        info.update(kind=k, context_tokens=ctx, stride=(stride if stride is not None else ctx // 2) if k == "causal" else None,
                    word_state=word_state, dtype=self.settings["dtype"], device=str(device), commit=commit,
                    n_special=n_special)
        for st in stories:
            arr, met = extract_story(
                mdl, tok, k, st, want, context_tokens=ctx, stride=stride if k == "causal" else None,
                word_state=word_state, batch_size=batch_size, progress=progress,
            )
            meta = {
                "model": self.src.model, "revision": self.src.revision, "commit": commit, "dataset": self.dataset,
                "story": st.name, "n_words": st.n_words, "n_layers": n_layers, "kind": k,
                "context_tokens": ctx, "metrics": met, "package_version": __version__,
            }
            self._store(st, arr, meta, commit)
        return want

    def _store(self, st: Story, arr: Mapping[int, np.ndarray], meta: dict, commit: str | None) -> None:
        if self.fcache is not None:
            if commit != self.src.commit:  # learnt the commit only when loading
                self.entries[st.name] = self._entry(st, commit)
            self.fcache.record_settings(self.src.model, self.src.revision, self.settings, commit)
            self.entries[st.name].write(arr, meta, dtype=self.cache_dtype)
        else:
            for layer, a in arr.items():
                self.arrays[(st.name, layer)] = a
        self.metas[st.name] = meta

    def features(self, stories: Sequence[Story], want: list[int] | None, train: dict, info: dict) -> Features:
        """The :class:`Features` of ``stories``: computed now or read lazily from the cache."""
        if self.fcache is not None:
            for s in stories:
                if s.name not in self.metas:
                    self.metas[s.name] = self.entries[s.name].meta or {}
        first = next(iter(self.metas.values()))
        n_layers = int(first["n_layers"])
        for key in ("kind", "context_tokens"):
            info.setdefault(key, first.get(key))
        if info.get("commit") is None:
            info["commit"] = first.get("commit")
        metrics = _metrics(self.metas, n_layers)
        info["stimulus_tokens"] = sum(m["metrics"]["n_tokens"] for m in self.metas.values())
        info["tokens_processed"] = sum(m["metrics"]["tokens_processed"] for m in self.metas.values())
        loader: Any = _EntryLoader({n: e.path for n, e in self.entries.items()}) if self.fcache is not None else self.arrays
        return Features(
            self.src.model, self.src.revision, want, n_layers, loader, [s.name for s in stories],
            training=train, metrics=metrics, info=info, story_objs={s.name: s for s in stories},
        )


class _EntryLoader:
    """(story, layer) -> memory-mapped cached array; picklable (for Dask workers)."""

    def __init__(self, paths: Mapping[str, Path]) -> None:
        self.paths = dict(paths)

    def __call__(self, story: str, layer: int) -> np.ndarray:
        return StoryEntry(self.paths[story]).load(layer)


def _metrics(metas: Mapping[str, dict], n_layers: int) -> dict:
    loss = {n: m["metrics"].get("loss") for n, m in metas.items()}
    ltok = {n: m["metrics"].get("loss_tokens", 0) for n, m in metas.items()}
    tot = sum(ltok[n] for n in metas if loss[n] is not None)
    mean_loss = sum(loss[n] * ltok[n] for n in metas if loss[n] is not None) / tot if tot else None
    count = sum(m["metrics"]["norm_count"] for m in metas.values())
    norms = {
        layer: sum(m["metrics"]["norm_sum"][str(layer)] for m in metas.values()) / count if count else None
        for layer in range(n_layers + 1)
    }
    return {
        "loss": {n: v for n, v in loss.items() if v is not None},
        "loss_tokens": ltok,
        "mean_loss": mean_loss,
        "activation_norm": norms,
    }


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


#: keys of a run config's ``features:`` section that :func:`extract_options` passes on as they are
_PASSED_ON = ("context_tokens", "batch_size", "device", "dtype", "cache", "stride", "kind", "word_state", "cache_dtype")


def extract_options(section: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`extract` keyword arguments from a run config's ``features:`` section.

    Every key is an :func:`extract` keyword of the same name, except:

    * ``float16`` (bool): store the features in float16, ``cache_dtype="float16"``
      (``False``: ``"float32"``);
    * ``word_reduction``: the old name of ``word_state`` (a DeprecationWarning).

    Raises
    ------
    ValidationError
        An unknown key, or two keys of one setting that disagree.
    """
    out: dict[str, Any] = {}
    for key, value in section.items():
        if key in _PASSED_ON:
            out[key] = value
        elif key not in ("float16", "word_reduction"):
            raise ValidationError(f"features: unknown setting {key!r}; known: {', '.join(_PASSED_ON + ('float16',))}")
    if "word_reduction" in section:
        warnings.warn("features.word_reduction is deprecated; use features.word_state", DeprecationWarning, stacklevel=2)
        _set_once(out, "word_state", section["word_reduction"], "word_reduction")
    if "float16" in section:
        _set_once(out, "cache_dtype", "float16" if section["float16"] else "float32", "float16")
    return out


def _set_once(out: dict[str, Any], key: str, value: Any, given_as: str) -> None:
    if key in out and out[key] != value:
        raise ValidationError(f"features: {given_as} and {key} disagree ({value!r} vs {out[key]!r}); give one")
    out[key] = value
