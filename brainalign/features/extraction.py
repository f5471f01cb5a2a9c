"""``extract()``: hidden states of every layer, aligned to the words of the stories.

One model load per call (one checkpoint), one forward pass per context window for all
layers (``output_hidden_states``), features cached on disk per (story, layer).
"""

from __future__ import annotations

import logging
import os
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

__all__ = ["extract", "Features", "extract_story"]

log = logging.getLogger(__name__)

WORD_STATES = ("last", "mean")


class Features(WordFeatures):
    """:class:`WordFeatures` returned by :func:`extract`, with a design-matrix helper.

    ``info`` holds how they were made: ``commit``, ``kind``, ``context_tokens`` (the
    effective window), ``stride``, ``word_state``, ``dtype``, ``device``,
    ``stimulus_tokens``, ``tokens_processed``, ``cache_hits``, ``dataset``.
    """

    def design(self, stories: Any, layer: int, delays: Sequence[int] = (1, 2, 3, 4), **kwargs: Any) -> np.ndarray:
        """Lanczos-resampled, per-story z-scored, delayed design of ``layer`` for ``stories``
        (a Dataset, Story objects, or their names when the features came from a Dataset)."""
        stories = _stories_of(stories, getattr(self, "_story_objs", None))
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
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    al = alignment or align_words(story.words, tokenizer, story=story.name)
    prefix, suffix = special_tokens(tokenizer)
    if kind == "causal":
        suffix = []
        wins = causal_windows(al.n_tokens, context_tokens, stride)
    else:
        wins = encoder_windows(al.word_first, al.word_last, context_tokens)
    P = len(prefix)
    n_words = al.n_words
    device = next(model.parameters()).device
    n_all = model.config.num_hidden_layers + 1
    hidden = None
    feats: dict[int, torch.Tensor] = {}
    counts = torch.zeros(n_words, dtype=torch.float32, device=device)
    norm_sum = torch.zeros(n_all, dtype=torch.float64, device=device)
    norm_n = 0
    loss_sum, loss_n = 0.0, 0
    ids_all = torch.as_tensor(al.input_ids, device=device)
    pre = torch.as_tensor(prefix, dtype=torch.long, device=device)
    suf = torch.as_tensor(suffix, dtype=torch.long, device=device)
    # (token, word) pairs for word_state="mean"
    if word_state == "mean":
        pair_tok = np.concatenate([al.word_tokens(i) for i in range(n_words)])
        pair_word = np.concatenate([np.full(al.word_last[i] - al.word_first[i] + 1, i) for i in range(n_words)])
    by_len: dict[int, list[Window]] = {}
    for w in wins:
        by_len.setdefault(w.length, []).append(w)
    batches = [ws[i : i + batch_size] for ws in by_len.values() for i in range(0, len(ws), batch_size)]
    with torch.inference_mode():
        for batch in tqdm(batches, desc=story.name, leave=False, disable=None if progress is None else not progress):
            ids = torch.stack([torch.cat([pre, ids_all[w.start : w.end], suf]) for w in batch])
            n_keep = max(w.n_out for w in batch)
            hs, logits = _forward(model, kind, ids, n_keep)
            if hidden is None:
                hidden = hs[0].shape[-1]
                feats = {l: torch.zeros(n_words, hidden, dtype=torch.float32, device=device) for l in layers}
            for b, w in enumerate(batch):
                lo, hi = P + w.out - w.start, P + w.end - w.start  # output positions in the window
                for l in range(n_all):
                    norm_sum[l] += hs[l][b, lo:hi].float().norm(dim=-1).sum().double()
                norm_n += hi - lo
                if word_state == "last":
                    if kind == "causal":
                        a = np.searchsorted(al.word_last, w.out, "left")
                        z = np.searchsorted(al.word_last, w.end, "left")
                        words = np.arange(a, z)
                    else:
                        words = np.flatnonzero(al.word_last == w.end - 1)
                    if words.size:
                        pos = torch.as_tensor(P + al.word_last[words] - w.start, device=device)
                        widx = torch.as_tensor(words, device=device)
                        for l in layers:
                            feats[l][widx] = hs[l][b, pos].float()
                else:
                    if kind == "causal":
                        sel = (pair_tok >= w.out) & (pair_tok < w.end)
                    else:
                        wd = np.flatnonzero(al.word_last == w.end - 1)
                        sel = np.isin(pair_word, wd) & (pair_tok >= w.out) & (pair_tok < w.end)
                    if sel.any():
                        pos = torch.as_tensor(P + pair_tok[sel] - w.start, device=device)
                        widx = torch.as_tensor(pair_word[sel], device=device)
                        for l in layers:
                            feats[l].index_add_(0, widx, hs[l][b, pos].float())
                        counts.index_add_(0, widx, torch.ones(widx.numel(), device=device))
                if logits is not None:
                    # logits at output token p predict token p + 1
                    n_out = w.n_out
                    tgt_hi = min(w.end + 1, al.n_tokens)
                    n_pred = tgt_hi - (w.out + 1)
                    if n_pred > 0:
                        lg = logits[b, logits.shape[1] - n_out : logits.shape[1] - n_out + n_pred].float()
                        tgt = ids_all[w.out + 1 : tgt_hi]
                        loss_sum += float(F.cross_entropy(lg, tgt, reduction="sum"))
                        loss_n += n_pred
            del hs, logits
    if word_state == "mean":
        c = counts.clamp(min=1).unsqueeze(1)
        feats = {l: v / c for l, v in feats.items()}
    arrays = {l: v.cpu().numpy() for l, v in feats.items()}
    metrics = {
        "n_tokens": al.n_tokens,
        "tokens_processed": tokens_processed(wins) + len(wins) * (len(prefix) + len(suffix)),
        "norm_sum": {str(l): float(norm_sum[l]) for l in range(n_all)},
        "norm_count": int(norm_n),
        "loss": (loss_sum / loss_n) if loss_n else None,
        "loss_tokens": int(loss_n),
    }
    return arrays, metrics


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
    cache_dir: str | os.PathLike | None = None,
    hf_cache_dir: str | os.PathLike | None = None,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
    use_safetensors: bool | None = None,
    tokens_per_step: float | None = None,
    revision_map: Mapping[str, Mapping[str, Any]] | Callable[[str], Any] | None = None,
    training: Mapping[str, Any] | None = None,
    dataset_name: str | None = None,
    progress: bool | None = None,
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
        Use the on-disk feature cache (default location ``cache_dir()/features``).
    stride : int, optional
        New tokens per causal window (default ``context_tokens // 2``, at most that).
    word_state : {"last", "mean"}
        A word's feature: its last token's state, or the mean of its tokens' states.
    kind : {"auto", "causal", "encoder"}
    cache_dtype : {"float32", "float16"}
        Storage type in the feature cache.
    cache_dir, hf_cache_dir : path, optional
        Hugging Face hub cache to load from (same as ``from_pretrained(cache_dir=)``).
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
    progress : bool, optional
        tqdm progress bars (default: when attached to a terminal).

    Returns
    -------
    Features
        A :class:`WordFeatures` with ``training`` and ``metrics`` filled: ``loss``
        (story -> mean next-token loss in nats, causal models), ``mean_loss``,
        ``activation_norm`` (layer -> mean L2 norm of the token states computed).
    """
    stories = _stories_of(source)
    dataset = dataset_name or (getattr(source, "name", None) if hasattr(source, "stories") else None) or "stories"
    if word_state not in WORD_STATES:
        raise ValidationError(f"word_state must be one of {WORD_STATES}, got {word_state!r}")
    check_device(device)
    if cache_dtype not in ("float32", "float16"):
        raise ValidationError(f"cache_dtype must be 'float32' or 'float16', got {cache_dtype!r}")
    if not isinstance(context_tokens, (int, np.integer)) or context_tokens < 2:
        raise ValidationError(f"context_tokens must be an integer >= 2, got {context_tokens!r}")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ValidationError(f"batch_size must be a positive integer, got {batch_size!r}")
    if cache_dir is not None and hf_cache_dir is not None and Path(cache_dir) != Path(hf_cache_dir):
        raise ValidationError("give cache_dir= or hf_cache_dir= (the same thing), not two different folders")
    hub_cache = cache_dir if cache_dir is not None else hf_cache_dir
    src = resolve_source(model, revision, hub_cache)
    dev, dt = resolve_device(device, dtype)
    if batch_size is None:
        batch_size = 16 if dev.type == "cuda" else 4
    if training is not None:
        train = parse_revision("_", mapping={"_": dict(training)})
    else:
        train = parse_revision(src.name, tokens_per_step=tokens_per_step, mapping=revision_map)
    if isinstance(cache, FeatureCache):
        fcache = cache
    elif cache is True:
        fcache = FeatureCache()
    elif cache is False or cache is None:
        fcache = None
    else:
        fcache = FeatureCache(cache)
    settings = {
        "context_tokens": int(context_tokens),
        "stride": None if stride is None else int(stride),
        "word_state": word_state,
        "kind": kind,
        "dtype": str(dt).replace("torch.", ""),
        "tokenizer": tokenizer_key(tokenizer),
    }
    entries: dict[str, StoryEntry] = {}
    metas: dict[str, dict] = {}
    want: list[int] | None = None
    missing = [s.name for s in stories]
    if fcache is not None:
        entries = {
            s.name: fcache.entry(src.model, src.revision, settings, dataset, s.name, s.words, src.commit)
            for s in stories
        }
        n_layers_known = None
        for e in entries.values():
            m = e.meta
            if m and m.get("n_layers") is not None:
                n_layers_known = int(m["n_layers"])
                break
        if n_layers_known is not None:
            want = _resolve_layers(layers, n_layers_known)
            missing = [s.name for s in stories if not entries[s.name].has(want, src.commit, cache_dtype)]
    by_name = {s.name: s for s in stories}
    arrays: dict[tuple[str, int], np.ndarray] = {}
    info: dict[str, Any] = {"dataset": dataset, "commit": src.commit, "cache_hits": len(stories) - len(missing)}
    if missing:
        mdl, tok, k = load_model(
            src, kind=kind, device=dev, dtype=dt, cache_dir=hub_cache, trust_remote_code=trust_remote_code,
            use_safetensors=use_safetensors, tokenizer=tokenizer,
        )
        try:
            cfg = mdl.config
            n_layers = int(cfg.num_hidden_layers)
            want = _resolve_layers(layers, n_layers)
            commit = src.commit or getattr(cfg, "_commit_hash", None)
            prefix, suffix = special_tokens(tok)
            n_special = len(prefix) + (0 if k == "causal" else len(suffix))
            max_pos = _max_positions(cfg)
            ctx = int(context_tokens)
            if max_pos is not None and ctx + n_special > max_pos:
                log.warning(
                    "context_tokens=%d does not fit %s (%d positions, %d special tokens): using %d",
                    ctx, src.model, max_pos, n_special, max_pos - n_special,
                )
                ctx = max_pos - n_special
            strd = stride
            if strd is not None and strd > ctx // 2:
                raise ValidationError(f"stride={strd} is more than half the effective window ({ctx} tokens)")
            info.update(kind=k, context_tokens=ctx, stride=(strd if strd is not None else ctx // 2) if k == "causal" else None, word_state=word_state,
                        dtype=settings["dtype"], device=str(dev), commit=commit, n_special=n_special)
            for name in missing:
                st = by_name[name]
                arr, met = extract_story(
                    mdl, tok, k, st, want, context_tokens=ctx, stride=strd if k == "causal" else None,
                    word_state=word_state, batch_size=int(batch_size), progress=progress,
                )
                meta = {
                    "model": src.model, "revision": src.revision, "commit": commit, "dataset": dataset,
                    "story": name, "n_words": st.n_words, "n_layers": n_layers, "kind": k,
                    "context_tokens": ctx, "metrics": met, "package_version": __version__,
                }
                if fcache is not None:
                    if commit != src.commit:  # learnt the commit only when loading
                        entries[name] = fcache.entry(src.model, src.revision, settings, dataset, name, st.words, commit)
                    fcache.record_settings(src.model, src.revision, settings, commit)
                    entries[name].write(arr, meta, dtype=cache_dtype)
                else:
                    for layer, a in arr.items():
                        arrays[(name, layer)] = a
                metas[name] = meta
        finally:
            del mdl
            _free_memory()
    if fcache is not None:
        for s in stories:
            if s.name not in metas:
                metas[s.name] = entries[s.name].meta or {}
    n_layers = int(next(iter(metas.values()))["n_layers"])
    for key in ("kind", "context_tokens"):
        info.setdefault(key, next(iter(metas.values())).get(key))
    if info.get("commit") is None:
        info["commit"] = next(iter(metas.values())).get("commit")
    metrics = _metrics(metas, n_layers)
    info["stimulus_tokens"] = sum(m["metrics"]["n_tokens"] for m in metas.values())
    info["tokens_processed"] = sum(m["metrics"]["tokens_processed"] for m in metas.values())
    if fcache is not None:
        loader: Any = _EntryLoader({n: e.path for n, e in entries.items()})
    else:
        loader = arrays
    fs = Features(
        src.model, src.revision, want, n_layers, loader, [s.name for s in stories],
        training=train, metrics=metrics, info=info,
    )
    fs._story_objs = by_name
    return fs


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
