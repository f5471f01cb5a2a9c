"""What happens inside the model over training.

Representation metrics on word features (any model): linear CKA between checkpoints,
effective dimensionality (participation ratio) and TwoNN intrinsic dimension.  Circuit
metrics for causal language models, read off attention patterns on repeated random
token sequences (Olsson et al. 2022, "In-context learning and induction heads"):
previous-token and induction scores per head, and the in-context learning score.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ValidationError

log = logging.getLogger(__name__)

__all__ = [
    "linear_cka",
    "participation_ratio",
    "twonn_dimension",
    "internal_states",
    "head_scores",
    "icl_score",
    "model_states",
    "load_causal_lm",
    "is_causal_lm",
]


# --------------------------------------------------------------------- representations


def _as_2d(X: Any, what: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValidationError(f"{what} must be 2-D (n_samples x n_features), has shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValidationError(f"{what} contains NaN or inf")
    return X


def linear_cka(X: Any, Y: Any) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) between two
    representations of the same samples: ``||Yc' Xc||_F^2 / (||Xc' Xc||_F ||Yc' Yc||_F)``.

    1 for representations equal up to rotation and isotropic scaling, near 0 for
    unrelated ones.
    """
    X, Y = _as_2d(X, "X"), _as_2d(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ValidationError(f"linear_cka(): X has {X.shape[0]} samples, Y has {Y.shape[0]}")
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    num = np.linalg.norm(Yc.T @ Xc, "fro") ** 2
    den = np.linalg.norm(Xc.T @ Xc, "fro") * np.linalg.norm(Yc.T @ Yc, "fro")
    return float(num / den) if den > 0 else float("nan")


def participation_ratio(X: Any) -> float:
    """Effective dimensionality: ``(sum λ)^2 / sum λ^2`` of the covariance eigenvalues
    (1 for one direction, d for isotropic data in d dimensions)."""
    X = _as_2d(X, "X")
    s = np.linalg.svd(X - X.mean(0), compute_uv=False) ** 2
    tot = s.sum()
    return float(tot**2 / np.sum(s**2)) if tot > 0 else float("nan")


def twonn_dimension(X: Any, discard: float = 0.1) -> float:
    """TwoNN intrinsic dimension (Facco et al. 2017, Sci Rep 7:12140).

    For each point, ``mu = r2 / r1`` (distances to its second and first nearest
    neighbours); the empirical ``-log(1 - F(mu))`` is fitted by ``d log(mu)`` through
    the origin after discarding the largest ``discard`` fraction of ``mu``.  Duplicate
    rows (the same word type at the embedding layer) are removed first, since r1 = 0
    has no ratio.
    """
    from sklearn.neighbors import NearestNeighbors

    X = np.unique(_as_2d(X, "X"), axis=0)
    n = X.shape[0]
    if n < 10:
        raise ValidationError(f"twonn_dimension(): {n} distinct points; at least 10 are needed")
    dist, _ = NearestNeighbors(n_neighbors=3).fit(X).kneighbors(X)
    r1, r2 = dist[:, 1], dist[:, 2]
    ok = r1 > 0
    mu = np.sort(r2[ok] / r1[ok])
    m = len(mu)
    F = np.arange(1, m + 1) / m
    keep = int(np.floor(m * (1 - discard)))
    keep = min(max(keep, 2), m - 1)
    x = np.log(mu[:keep])
    y = -np.log(1 - F[:keep])
    return float(np.dot(x, y) / np.dot(x, x)) if np.dot(x, x) > 0 else float("nan")


def _training_axis(feats: Any) -> tuple[float, float]:
    tr = getattr(feats, "training", None) or {}
    step = tr.get("step")
    tokens = tr.get("tokens")
    return (np.nan if step is None else float(step)), (np.nan if tokens is None else float(tokens))


def internal_states(
    features: Mapping[str, Any],
    layers: Sequence[int] | None = None,
    stories: Sequence[str] | None = None,
    max_words: int = 2000,
    twonn: bool = True,
    tokens: Mapping[str, float] | None = None,
    seed: int = 0,
):
    """Representation metrics per checkpoint × layer.

    Parameters
    ----------
    features : mapping checkpoint -> WordFeatures, or checkpoint -> {layer: array}
        Checkpoints in training order (the last one is "final").  Arrays are
        (n_words x hidden), the same words in the same order at every checkpoint.
    layers : sequence of int, optional
        Layers to use (default: those common to all checkpoints).
    stories : sequence of str, optional
        Stories whose words are pooled (WordFeatures only; default: common stories).
    max_words : int
        Words sampled (the same words at every checkpoint and layer).
    twonn : bool
        Also compute the TwoNN dimension (the slowest metric).
    tokens : mapping checkpoint -> tokens seen, optional
        Training axis, when the features do not carry it (``WordFeatures.training``).

    Returns
    -------
    xarray.Dataset
        dims (checkpoint, layer); variables ``cka_prev`` (to the previous checkpoint;
        NaN for the first), ``cka_final`` (to the last checkpoint), ``eff_dim``,
        ``twonn``; coords ``step``, ``tokens`` on checkpoint and ``layer``.
    """
    import xarray as xr
    from tqdm.auto import tqdm

    names = list(features)
    if not names:
        raise ValidationError("internal_states(): no checkpoints given")
    getters = {}
    all_layers = []
    for name in names:
        f = features[name]
        if hasattr(f, "get") and hasattr(f, "layers") and hasattr(f, "stories"):
            st = list(stories) if stories is not None else None
            getters[name] = ("wf", f)
            all_layers.append(set(f.layers))
        elif isinstance(f, Mapping):
            getters[name] = ("map", f)
            all_layers.append({int(k) for k in f})
        else:
            raise ValidationError(
                f"internal_states(): checkpoint {name!r} is a {type(f).__name__}; expected WordFeatures or a mapping layer -> array"
            )
    common = sorted(set.intersection(*all_layers))
    use_layers = list(layers) if layers is not None else common
    missing = [la for la in use_layers if la not in common]
    if missing or not use_layers:
        raise ValidationError(f"internal_states(): layers {missing or use_layers} not present at every checkpoint (common: {common})")
    if any(kind == "wf" for kind, _ in getters.values()):
        wfs = [f for kind, f in getters.values() if kind == "wf"]
        common_st = [s for s in wfs[0].stories if all(s in f.stories for f in wfs)]
        st = list(stories) if stories is not None else common_st
        bad = [s for s in st if s not in common_st]
        if bad or not st:
            raise ValidationError(f"internal_states(): stories {bad or st} not extracted at every checkpoint")

    def load(name: str, layer: int) -> np.ndarray:
        kind, f = getters[name]
        if kind == "wf":
            return np.vstack([f.get(s, layer) for s in st])
        return np.asarray(f[layer] if layer in f else f[str(layer)], dtype=np.float32)

    n_words = load(names[0], use_layers[0]).shape[0]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n_words, size=min(max_words, n_words), replace=False))
    C, L = len(names), len(use_layers)
    out = {k: np.full((C, L), np.nan) for k in ("cka_prev", "cka_final", "eff_dim", "twonn")}
    skipped: dict = {}  # layer -> [(checkpoint, why)]: one warning per layer, not one per checkpoint
    for j, layer in enumerate(tqdm(use_layers, desc="internal states", unit="layer", leave=False)):
        reps = []
        for name in names:
            X = load(name, layer)
            if X.shape[0] != n_words:
                raise ValidationError(
                    f"internal_states(): checkpoint {name!r} layer {layer} has {X.shape[0]} words, expected {n_words}"
                )
            reps.append(X[idx].astype(np.float64))
        for i, X in enumerate(reps):
            out["cka_final"][i, j] = linear_cka(X, reps[-1])
            if i:
                out["cka_prev"][i, j] = linear_cka(X, reps[i - 1])
            out["eff_dim"][i, j] = participation_ratio(X)
            if twonn:
                try:
                    out["twonn"][i, j] = twonn_dimension(X)
                except ValidationError as exc:
                    skipped.setdefault(layer, []).append((names[i], exc))
    for layer, cells in skipped.items():
        log.warning("TwoNN skipped for layer %s at %d of %d checkpoints (%s: %s)", layer, len(cells), C,
                    ", ".join(c for c, _ in cells) if len(cells) <= 3 else f"{cells[0][0]} ... {cells[-1][0]}",
                    cells[0][1])
    steps, toks = zip(*(_training_axis(getters[n][1]) for n in names))
    toks = np.array(toks, dtype=float)
    if tokens is not None:
        toks = np.array([float(tokens.get(n, np.nan)) for n in names])
    ds = xr.Dataset(
        {k: (("checkpoint", "layer"), v) for k, v in out.items() if twonn or k != "twonn"},
        coords={"checkpoint": names, "layer": use_layers, "step": ("checkpoint", np.array(steps)), "tokens": ("checkpoint", toks)},
    )
    ds.attrs["n_words"] = int(len(idx))
    return ds


# --------------------------------------------------------------------- circuits


def load_causal_lm(path: str | os.PathLike, revision: str | None = None, trust_remote_code: bool = False):
    """A Hugging Face causal LM with eager attention (so attention weights are
    returned), in eval mode, from safetensors weights."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path),
        revision=revision,
        attn_implementation="eager",
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    return model.eval()


def _ensure_eager(model) -> None:
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in (None, "eager"):
        if hasattr(model, "set_attn_implementation"):
            log.info("switching attention from %s to eager to read attention weights", impl)
            model.set_attn_implementation("eager")
        else:  # pragma: no cover - older transformers
            raise ValidationError(f"model uses {impl!r} attention; load it with attn_implementation='eager'")


def _token_pool(model, tokenizer=None) -> np.ndarray:
    vocab = int(model.get_input_embeddings().num_embeddings)
    if tokenizer is not None:
        vocab = min(vocab, len(tokenizer))
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
    else:
        special = set()
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(model.config, key, None)
            if isinstance(v, int):
                special.add(v)
    pool = np.array([t for t in range(vocab) if t not in special])
    if len(pool) < 2:
        raise ValidationError("head_scores(): fewer than 2 usable token ids in the vocabulary")
    return pool


def head_scores(
    model,
    tokenizer=None,
    seq_len: int | None = None,
    n_seqs: int = 16,
    batch_size: int = 8,
    seed: int = 0,
):
    """Previous-token and induction scores of every attention head.

    On ``n_seqs`` sequences ``[r, r]`` (``r``: ``seq_len`` random token ids, special
    tokens excluded), the induction score of a head is its mean attention from each
    position ``i`` of the second copy to position ``i - seq_len + 1`` (the token after
    the earlier occurrence of the current token); the previous-token score is its mean
    attention from each position ``i >= 1`` to ``i - 1`` (Olsson et al. 2022).

    Parameters
    ----------
    model : transformers causal LM
        Switched to eager attention when it uses another implementation.
    tokenizer : optional
        Only used to exclude special tokens and unused embedding rows.
    seq_len : int, optional
        Length of the random half (default: up to 64, within the context window).

    Returns
    -------
    xarray.Dataset
        ``induction`` and ``prev_token``, dims (layer, head); ``layer`` counts blocks
        from 1 (the block whose output is hidden-state layer ``layer``).
    """
    import torch
    import xarray as xr

    _ensure_eager(model)
    max_pos = getattr(model.config, "max_position_embeddings", None) or 2048
    if seq_len is None:
        seq_len = int(min(64, (max_pos - 1) // 2))
    if seq_len < 2 or 2 * seq_len > max_pos:
        raise ValidationError(f"head_scores(): seq_len={seq_len} does not fit twice in the context ({max_pos})")
    pool = _token_pool(model, tokenizer)
    rng = np.random.default_rng(seed)
    r = pool[rng.integers(0, len(pool), (n_seqs, seq_len))]
    ids = torch.as_tensor(np.concatenate([r, r], axis=1), dtype=torch.long)
    device = next(model.parameters()).device
    q_ind = torch.arange(seq_len, 2 * seq_len)
    q_prev = torch.arange(1, 2 * seq_len)
    ind_sum = prev_sum = None
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, n_seqs, batch_size):
            out = model(ids[start : start + batch_size].to(device), output_attentions=True)
            if not out.attentions or out.attentions[0] is None:
                raise ValidationError("head_scores(): the model returned no attention weights (load it with attn_implementation='eager')")
            att = torch.stack([a.float() for a in out.attentions], dim=1)  # B, layer, head, q, k
            ind = att[..., q_ind, q_ind - seq_len + 1].mean(-1).sum(0)
            prev = att[..., q_prev, q_prev - 1].mean(-1).sum(0)
            ind_sum = ind if ind_sum is None else ind_sum + ind
            prev_sum = prev if prev_sum is None else prev_sum + prev
    model.train(was_training)
    ind = (ind_sum / n_seqs).cpu().numpy()
    prev = (prev_sum / n_seqs).cpu().numpy()
    n_layers, n_heads = ind.shape
    return xr.Dataset(
        {"induction": (("layer", "head"), ind), "prev_token": (("layer", "head"), prev)},
        coords={"layer": np.arange(1, n_layers + 1), "head": np.arange(n_heads)},
        attrs={"seq_len": seq_len, "n_seqs": n_seqs},
    )


def _text_ids(texts: Sequence[str] | str, tokenizer, length: int, n_seqs: int) -> np.ndarray:
    if tokenizer is None:
        raise ValidationError("icl_score(): a tokenizer is needed to score texts")
    if isinstance(texts, str):
        texts = [texts]
    stream: list[int] = []
    for t in texts:
        stream.extend(tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"])  # long texts: windows follow
    n = min(n_seqs, len(stream) // length)
    if n < 1:
        raise ValidationError(f"icl_score(): the texts give {len(stream)} tokens, fewer than one window of {length}")
    return np.asarray(stream[: n * length]).reshape(n, length)


def icl_score(
    model,
    inputs: Any,
    tokenizer=None,
    early: int = 50,
    late: int = 500,
    n_seqs: int = 32,
    batch_size: int = 8,
) -> dict:
    """In-context learning score: mean loss on token ``late`` minus mean loss on token
    ``early`` of the same contexts (Olsson et al. 2022: token 500 vs 50).  Negative
    when later tokens are predicted better thanks to the context.

    ``inputs`` is an integer array (n_seqs, length) of token ids, or text(s) that
    ``tokenizer`` turns into windows of ``late + 1`` tokens.  When the context is
    shorter than ``late + 1`` both positions shrink in proportion (``late`` = context
    - 1, ``early`` = late / 10), and the positions used are returned.
    """
    import torch

    max_pos = getattr(model.config, "max_position_embeddings", None) or 2048
    if late >= max_pos:
        late = max_pos - 1
        early = max(1, late // 10)
    if isinstance(inputs, (str, list, tuple)) and (isinstance(inputs, str) or (inputs and isinstance(inputs[0], str))):
        ids = _text_ids(inputs, tokenizer, late + 1, n_seqs)
    else:
        ids = np.asarray(inputs)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValidationError(f"icl_score(): inputs must be an integer array (n_seqs, length), got {ids.dtype} {ids.shape}")
        if ids.shape[1] < late + 1:
            late = ids.shape[1] - 1
            early = max(1, late // 10)
    if not 1 <= early < late:
        raise ValidationError(f"icl_score(): need 1 <= early < late, got early={early}, late={late}")
    ids_t = torch.as_tensor(ids[:, : late + 1], dtype=torch.long)
    device = next(model.parameters()).device
    losses = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(ids_t), batch_size):
            x = ids_t[s : s + batch_size].to(device)
            logits = model(x).logits.float()
            lp = torch.log_softmax(logits[:, :-1], dim=-1)
            nll = -lp.gather(-1, x[:, 1:, None])[..., 0]  # column j: loss of token j + 1
            losses.append(nll.cpu().numpy())
    model.train(was_training)
    nll = np.concatenate(losses)
    le, ll = float(nll[:, early - 1].mean()), float(nll[:, late - 1].mean())
    return {"icl_score": ll - le, "loss_early": le, "loss_late": ll, "early": early, "late": late, "n_seqs": int(len(nll))}


def _training_state(folder: str | os.PathLike) -> tuple[float, float]:
    """(step, tokens seen) from a checkpoint folder's ``trainer_state.json``; NaN when absent."""
    import json
    from pathlib import Path

    state = Path(folder) / "trainer_state.json"
    if not state.is_file():
        return np.nan, np.nan
    st = json.loads(state.read_text())
    tok = st.get("num_input_tokens_seen")
    return float(st.get("global_step", np.nan)), (np.nan if tok is None else float(tok))


def is_causal_lm(path: str | os.PathLike, revision: str | None = None, trust_remote_code: bool = False) -> bool:
    """Whether the checkpoint's config is a causal LM (one with a ``...ForCausalLM`` class);
    reads only its ``config.json`` (an encoder such as MiniLM or BERT is not)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    conf = AutoConfig.from_pretrained(str(path), revision=revision, trust_remote_code=trust_remote_code)
    archs = getattr(conf, "architectures", None) or []
    if archs:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    return conf.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def _source(src: Any) -> tuple[Any, str | None]:
    """(path or hub id, revision) of a checkpoint given as a path, an id or (id, revision)."""
    if isinstance(src, tuple) and len(src) == 2:
        return src[0], (None if src[1] is None else str(src[1]))
    return src, None


def _load(src: Any, trust_remote_code: bool) -> tuple[Any, float, float]:
    """(model, step, tokens) of a checkpoint: a model object, a folder, or (hub id, revision)."""
    path, revision = _source(src)
    if not isinstance(path, (str, os.PathLike)):
        return path, np.nan, np.nan
    step, tok = _training_state(path) if revision is None else (np.nan, np.nan)
    return load_causal_lm(path, revision=revision, trust_remote_code=trust_remote_code), step, tok


def _tokenizer_of(src: Any, trust_remote_code: bool):
    from transformers import AutoTokenizer

    path, revision = _source(src)
    if not isinstance(path, (str, os.PathLike)):
        raise ValidationError("model_states(): a tokenizer is needed when the checkpoints are model objects")
    return AutoTokenizer.from_pretrained(str(path), revision=revision, trust_remote_code=trust_remote_code)


def model_states(
    checkpoints: Mapping[str, Any],
    tokenizer=None,
    texts: Sequence[str] | str | None = None,
    tokens: Mapping[str, float] | None = None,
    seq_len: int | None = None,
    n_seqs: int = 16,
    seed: int = 0,
    trust_remote_code: bool = False,
    instructions: Sequence[Any] | None = None,
    max_new_tokens: int = 8,
):
    """Circuit metrics per checkpoint: head scores, with ``texts`` the ICL score, with
    ``instructions`` the instruction-following probe; each checkpoint is loaded once.

    Parameters
    ----------
    checkpoints : mapping name -> model, folder path, or (hub id, revision)
        In training order.  Folders and hub revisions (from the Hugging Face cache, or
        the hub unless ``HF_HUB_OFFLINE=1``) are loaded with eager attention from
        safetensors.
    tokenizer : optional
        Needed for ``texts`` and ``instructions``; loaded from the first checkpoint when
        not given.
    tokens : mapping name -> tokens seen, optional
        Training axis (else read from each folder's ``trainer_state.json`` when present).
    trust_remote_code : bool
        Passed to ``from_pretrained`` (off unless the caller asks).
    instructions : sequence of ProbeItem, optional
        :func:`brainalign.dynamics.instructions.probe_items`; answers of at most
        ``max_new_tokens`` greedy tokens.

    Returns
    -------
    xarray.Dataset
        ``induction``, ``prev_token`` (checkpoint, layer, head), ``induction_max``,
        ``prev_token_max`` (checkpoint, layer), ``icl_score`` (checkpoint) and, with
        ``instructions``, ``instruction_following`` (checkpoint).
    """
    import xarray as xr
    from tqdm.auto import tqdm

    from .instructions import instruction_following

    names = list(checkpoints)
    if not names:
        raise ValidationError("model_states(): no checkpoints given")
    if tokenizer is None and (texts is not None or instructions):
        tokenizer = _tokenizer_of(checkpoints[names[0]], trust_remote_code)
    per, icl, follow, steps, toks = [], [], [], [], []
    for name in tqdm(names, desc="model states", unit="ckpt", leave=False):
        model, step, tok = _load(checkpoints[name], trust_remote_code)
        per.append(head_scores(model, tokenizer, seq_len=seq_len, n_seqs=n_seqs, seed=seed))
        icl.append(_icl_or_nan(model, texts, tokenizer, name))
        if instructions:
            follow.append(instruction_following(model, tokenizer, instructions, max_new_tokens)["instruction_following"])
        steps.append(step)
        toks.append(float(tokens[name]) if tokens is not None and name in tokens else tok)
    ds = xr.concat(per, dim=xr.DataArray(names, dims="checkpoint", name="checkpoint"))
    ds["induction_max"] = ds["induction"].max("head")
    ds["prev_token_max"] = ds["prev_token"].max("head")
    ds["icl_score"] = ("checkpoint", np.asarray(icl, dtype=float))
    if instructions:
        ds["instruction_following"] = ("checkpoint", np.asarray(follow, dtype=float))
        ds.attrs["probe"] = f"{len(instructions)} prompts, at most {int(max_new_tokens)} new tokens, scored by form"
    return ds.assign_coords(step=("checkpoint", np.asarray(steps, float)), tokens=("checkpoint", np.asarray(toks, float)))


def _icl_or_nan(model, texts, tokenizer, name: str) -> float:
    if texts is None:
        return np.nan
    try:
        return icl_score(model, texts, tokenizer)["icl_score"]
    except ValidationError as exc:  # e.g. texts shorter than one window
        log.info("no ICL score for %s: %s", name, exc)
        return np.nan
