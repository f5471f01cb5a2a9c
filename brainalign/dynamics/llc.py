"""The local learning coefficient (LLC) of checkpoints, through devinterp.

The LLC (Lau et al. 2023) measures the effective number of parameters of a model at
its current weights: ``n_beta * (E[L(w)] - L(w*))``, the expectation taken by SGLD
chains that start at the checkpoint ``w*`` and are kept near it by a localisation
term. Its changes over training mark developmental stages (Hoogland et al. 2024).

Needs the optional extra: ``pip install 'brainalign[devinterp]'``.

The defaults (:class:`LLCSettings`) were tuned on the tiny GPT-NeoX models of
``brainalign train-tiny --task induction`` (2 layers, 32 wide): with them every chain's
loss rises from the checkpoint's and levels off (the mean of the last quarter of its
trace within :data:`SETTLE_TOL` of the rise, or within the minibatch noise, of the
quarter before's). A stronger pull
(``localization``) or a smaller ``lr`` settles chains faster and makes the estimate
more local; a larger ``lr`` lets chains drift (the loss climbs to chance, the estimate
grows without meaning). :func:`estimate_llc` flags chains that have not settled, and
negative estimates (the checkpoint is not near a minimum of the loss), with a warning.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ValidationError

__all__ = ["LLCSettings", "SETTLE_TOL", "require_devinterp", "estimate_llc", "llc_curve", "chains_settled"]

#: a chain has settled when the mean loss of its last quarter differs from the quarter
#: before by at most this fraction of its rise above the checkpoint's loss, or by at most
#: twice the standard error of that difference (each draw is one minibatch: where the
#: rise is about as small as the minibatch noise, as near initialisation, the noise decides)
SETTLE_TOL = 0.1


@dataclass(frozen=True)
class LLCSettings:
    """SGLD settings of :func:`estimate_llc` (see the module docstring)."""

    lr: float = 1e-5
    n_beta: float = 30.0
    localization: float = 3000.0
    chains: int = 2
    draws: int = 100
    batch_size: int = 32
    seed: int = 0
    #: devinterp weight restriction for a refined LLC ("l0h1", "l1 attn", ...); None: all weights
    restrict: str | None = None

    def __post_init__(self):
        for k in ("lr", "n_beta"):
            if not getattr(self, k) > 0:
                raise ValidationError(f"LLCSettings: {k} must be positive, got {getattr(self, k)!r}")
        for k in ("chains", "draws", "batch_size"):
            if int(getattr(self, k)) < 1:
                raise ValidationError(f"LLCSettings: {k} must be a positive integer, got {getattr(self, k)!r}")
        if self.draws < 8:
            raise ValidationError(f"LLCSettings: draws must be at least 8 to judge whether a chain settled, got {self.draws}")


def require_devinterp():
    """devinterp's ``llc`` function, or an error that says how to install it."""
    try:
        from devinterp.slt.llc import llc
    except ImportError as exc:
        raise ImportError(
            "the local learning coefficient needs devinterp, an optional extra: pip install 'brainalign[devinterp]' "
            f"({exc})") from None
    return llc


@contextlib.contextmanager
def _chain_bars(show: bool) -> Iterator[None]:
    """devinterp draws one progress bar per chain and has no switch for it: hidden unless ``show``."""
    if show:
        yield
        return
    from devinterp.slt import sampler

    bar = sampler.trange
    sampler.trange = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        sampler.trange = bar


def chains_settled(trace: np.ndarray, init_loss: float) -> np.ndarray:
    """Per chain (rows of ``trace``, its loss per draw), whether it has settled: the mean
    of its last quarter differs from the quarter before's by at most :data:`SETTLE_TOL`
    of its rise above ``init_loss``, or by at most twice the standard error of that
    difference (minibatch noise)."""
    trace = np.atleast_2d(np.asarray(trace, dtype=float))
    q = max(trace.shape[1] // 4, 1)
    a, b = trace[:, -q:], trace[:, -2 * q:-q]
    last, prev = a.mean(1), b.mean(1)
    rise = np.maximum(np.abs(last - init_loss), 1e-6)
    noise = np.sqrt(a.var(1) / q + b.var(1) / q)
    return np.isfinite(last) & (np.abs(last - prev) <= np.maximum(SETTLE_TOL * rise, 2.0 * noise))


@contextlib.contextmanager
def _global_rngs_kept() -> Iterator[None]:
    """devinterp seeds numpy's and Python's global generators: the caller's are put back."""
    import random

    py, npy = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def _dataset(sequences: np.ndarray):
    from datasets import Dataset

    x = np.asarray(sequences)
    if x.ndim != 2 or x.shape[1] < 2 or not np.issubdtype(x.dtype, np.integer):
        raise ValidationError(f"estimate_llc(): sequences must be a 2-D array of token ids, at least 2 per row; got shape "
                              f"{x.shape}, dtype {x.dtype}")
    return Dataset.from_dict({"input_ids": x.tolist()}).with_format("torch")


def _masked_loss(mask: np.ndarray):
    """devinterp loss: per row, the mean next-token loss over the ``mask``ed tokens
    (mask over input positions 1..n-1), spread over the row's positions so devinterp's
    mean is the training loss."""
    import torch

    m = torch.as_tensor(np.asarray(mask, bool)[1:], dtype=torch.float32)

    def loss_fn(model, input_ids):
        from devinterp.slt.lm_loss import compute_per_token_loss

        per = compute_per_token_loss(model, input_ids)
        row = (per * m).sum(-1) / m.sum()
        return row[:, None].expand_as(per)

    return loss_fn


def estimate_llc(model, sequences: np.ndarray, settings: LLCSettings | None = None, loss_positions=None,
                 progress: bool = False):
    """The LLC of ``model`` (a causal LM) on ``sequences`` (rows of token ids).

    ``loss_positions``: a boolean vector over a row's tokens, the ones the training loss
    predicts (None: every next token). ``progress``: devinterp's progress bar per chain.
    The chains run where the model's weights are (move it to a GPU first to run there).
    Returns an xarray Dataset: ``llc`` and
    ``llc_std`` (over chains), ``llc_chain`` (chain), ``loss_trace`` (chain x draw),
    ``init_loss``, ``settled`` (chain) and the settings as attributes. The same seed
    gives the same estimate.
    """
    import torch
    import xarray as xr

    llc = require_devinterp()
    s = settings or LLCSettings()
    kwargs = {}
    if s.restrict:
        from devinterp.slt.weight_restrictions import create_param_masks

        try:
            kwargs["param_masks"] = create_param_masks(model, s.restrict)
        except (ValueError, KeyError) as exc:
            raise ValidationError(f"LLCSettings.restrict={s.restrict!r}: {exc}") from None
    ds = _dataset(sequences)
    if loss_positions is not None:
        if np.shape(loss_positions) != (np.shape(sequences)[1],) or not np.asarray(loss_positions, bool)[1:].any():
            raise ValidationError(f"estimate_llc(): loss_positions must be one flag per token of a row, shape "
                                  f"({np.shape(sequences)[1]},), at least one after the first; got shape "
                                  f"{np.shape(loss_positions)}")
        kwargs["loss_fn"] = _masked_loss(loss_positions)
    if len(ds) < s.batch_size:
        raise ValidationError(f"estimate_llc(): {len(ds)} sequences, fewer than batch_size={s.batch_size}")
    model.eval()  # no dropout; SGLD computes gradients itself
    with warnings.catch_warnings(), torch.random.fork_rng(), _global_rngs_kept(), _chain_bars(progress):
        warnings.simplefilter("ignore")  # devinterp warns about its temporary output folder
        out = llc(model, ds, {}, lr=s.lr, n_beta=s.n_beta, localization=s.localization, num_chains=s.chains,
                  num_draws=s.draws, batch_size=s.batch_size, init_seed=s.seed,
                  num_init_loss_batches=max(1, min(8, len(ds) // s.batch_size)),
                  device=str(next(model.parameters()).device), **kwargs)
    trace = np.asarray(out.loss_trace.values, dtype=float)
    init = float(out.init_loss)
    settled = chains_settled(trace, init)
    chain = np.asarray(out.llc_per_chain.values, dtype=float)
    res = xr.Dataset({"llc": ((), float(np.mean(chain))), "llc_std": ((), float(np.std(chain))),
                      "llc_chain": (("chain",), chain), "loss_trace": (("chain", "draw"), trace),
                      "init_loss": ((), init), "settled": (("chain",), settled)},
                     attrs={"settings": asdict(s), "settle_tol": SETTLE_TOL})
    return res


def llc_curve(checkpoints: Mapping[str, str], sequences: np.ndarray, settings: LLCSettings | None = None,
              tokens: Mapping[str, float] | None = None, loss_positions=None):
    """:func:`estimate_llc` of each checkpoint folder (label -> folder), concatenated over
    ``checkpoint`` (with a ``tokens`` coordinate when given). Warns naming the
    checkpoints whose chains did not settle or whose estimate is negative."""
    import xarray as xr
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    parts = []
    for label, folder in tqdm(checkpoints.items(), desc="LLC", unit="ckpt", leave=False):
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
        parts.append(estimate_llc(model, sequences, settings, loss_positions).expand_dims(checkpoint=[label]))
    out = xr.concat(parts, dim="checkpoint")
    out.attrs = parts[0].attrs
    if tokens is not None:
        out = out.assign_coords(tokens=("checkpoint", [float(tokens[c]) for c in checkpoints]))
    bad = [c for c, ok in zip(checkpoints, out["settled"].all("chain").values) if not ok]
    neg = [c for c, v in zip(checkpoints, out["llc"].values) if v < 0]
    if bad:
        warnings.warn(f"LLC chains did not settle at {bad}: use more draws, a smaller lr or a stronger "
                      "localization (the loss traces are in loss_trace)", stacklevel=2)
    if neg:
        warnings.warn(f"negative LLC at {neg}: those checkpoints are not near a minimum of the loss "
                      "(or the chains are too hot)", stacklevel=2)
    return out
