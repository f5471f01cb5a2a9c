"""Does a checkpoint follow instructions? A small probe scored by the form of the answer.

The first of the "Triple Phase Transitions" (Nakagi et al. 2025) ties the surge in brain
alignment to models starting to follow task instructions. This probe measures that for
any causal LM checkpoint without a judge model or an answer key: every prompt fixes the
*form* of the answer, and the greedy continuation is scored by that form alone.

Four kinds of prompt (each built from word lists, :func:`probe_items`):

``one_word``
    "Answer with one word." + a question: the answer is exactly one word.
``repeat``
    "Repeat the word 'lantern'.": the answer's first word is the given word.
``capitals``
    "Answer in capital letters." + a request: the answer has letters, all capitals.
``choice``
    "Pick one of: red, green, blue." + a question: the answer's first word is one of
    the options.

The answer is the continuation up to its first newline (at most ``max_new_tokens``
tokens, greedy). A model that continues with the next prompt, with punctuation or with
nothing scores 0 on that item. The score of a checkpoint is the fraction of items whose
answer has the asked form (overall and per kind); chance is near 0 for an untrained
model. IFEval (Zhou et al. 2023) results from lm-evaluation-harness files give the same
kind of curve for larger models: :func:`ifeval_curve`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ValidationError

log = logging.getLogger(__name__)

__all__ = ["KINDS", "ProbeItem", "probe_items", "answer_has_form", "instruction_following", "instruction_curve",
           "ifeval_curve"]

#: the kinds of prompt of the built-in probe
KINDS = ("one_word", "repeat", "capitals", "choice")

_QUESTIONS = [
    "What colour is the sky on a clear day?", "What animal says moo?", "What do you drink when you are thirsty?",
    "What season comes after winter?", "What do bees make?", "Where do fish live?", "What shines at night?",
    "What do you wear on your feet?", "What falls from clouds?", "What fruit is yellow and long?",
    "What do you use to write?", "What is frozen water called?",
]
_WORDS = ["lantern", "harbour", "pebble", "violin", "meadow", "candle", "ribbon", "glacier", "saddle", "orchard",
          "thimble", "compass"]
_REQUESTS = ["Name a fruit.", "Name a colour.", "Name an animal.", "Name a city.", "Name a tool.", "Name a tree.",
             "Name a river.", "Name a flower.", "Name a metal.", "Name a bird.", "Name a planet.", "Name a drink."]
_OPTIONS = [("red", "green", "blue"), ("cat", "dog", "horse"), ("tea", "milk", "juice"), ("north", "south", "east"),
            ("one", "two", "three"), ("oak", "pine", "birch")]
_WORD = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*")


@dataclass(frozen=True)
class ProbeItem:
    """One prompt of the probe: its kind, its text and what its answer's form is checked against."""

    kind: str
    prompt: str
    target: tuple[str, ...] = ()


def probe_items(n_per_kind: int = 12, seed: int = 0) -> list[ProbeItem]:
    """The built-in probe: ``n_per_kind`` prompts of each kind (at most 12), chosen by ``seed``."""
    if not 1 <= int(n_per_kind) <= 12:
        raise ValidationError(f"n_per_kind must be between 1 and 12, got {n_per_kind!r}")
    n = int(n_per_kind)
    rng = np.random.default_rng([int(seed), 17])
    pick = [rng.permutation(12)[:n] for _ in KINDS]
    items = [ProbeItem("one_word", f"Answer with one word. {_QUESTIONS[i]}\nAnswer:") for i in pick[0]]
    items += [ProbeItem("repeat", f"Repeat the word '{_WORDS[i]}'.\nAnswer:", (_WORDS[i],)) for i in pick[1]]
    items += [ProbeItem("capitals", f"Answer in capital letters. {_REQUESTS[i]}\nAnswer:") for i in pick[2]]
    for j, i in enumerate(pick[3]):
        opts = _OPTIONS[(int(i) + j) % len(_OPTIONS)]
        items.append(ProbeItem("choice", f"Pick one of: {', '.join(opts)}. {_QUESTIONS[int(i)]}\nAnswer:", opts))
    return items


def answer_has_form(item: ProbeItem, answer: str) -> bool:
    """Whether ``answer`` (the continuation, cut at its first newline) has the form ``item`` asks for."""
    text = answer.split("\n", 1)[0].strip()
    words = _WORD.findall(text)
    if item.kind == "one_word":
        return len(words) == 1 and re.fullmatch(r"[\"']?" + re.escape(words[0]) + r"[\"']?[.!]?", text) is not None
    if item.kind == "repeat":
        return bool(words) and words[0].lower() == item.target[0].lower()
    if item.kind == "capitals":
        letters = [c for c in text if c.isalpha()]
        return bool(letters) and all(c.isupper() for c in letters)
    if item.kind == "choice":
        return bool(words) and words[0].lower() in {o.lower() for o in item.target}
    raise ValidationError(f"unknown probe kind {item.kind!r} (kinds: {', '.join(KINDS)})")


def _generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations of ``prompts`` (``max_new_tokens`` each; the scoring cuts them
    at their first newline), one prompt at a time: no padding to get wrong."""
    import torch

    device = next(model.parameters()).device
    limit = getattr(model.config, "max_position_embeddings", None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for prompt in prompts:
                ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                if limit is not None and len(ids) + max_new_tokens > limit:
                    ids = ids[-(limit - max_new_tokens):]
                x = torch.as_tensor([ids], device=device)
                y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                   do_sample=False, num_beams=1, pad_token_id=pad)
                out.append(tokenizer.decode(y[0, x.shape[1]:].tolist()))
    finally:
        model.train(was_training)
    return out


def instruction_following(model, tokenizer, items: Sequence[ProbeItem] | None = None, max_new_tokens: int = 8) -> dict:
    """The probe's score of one causal LM: ``{"instruction_following", "by_kind", "n", "answers"}``.

    ``items`` default :func:`probe_items` (48 prompts). ``instruction_following`` is the
    fraction of answers with the asked form; ``by_kind`` the same per kind.
    """
    items = list(probe_items() if items is None else items)
    if not items:
        raise ValidationError("instruction_following(): no probe items")
    answers = [a.split("\n", 1)[0] for a in _generate(model, tokenizer, [it.prompt for it in items], int(max_new_tokens))]
    ok = np.array([answer_has_form(it, a) for it, a in zip(items, answers)], dtype=bool)
    kinds = [it.kind for it in items]
    by_kind = {k: float(ok[[x == k for x in kinds]].mean()) for k in dict.fromkeys(kinds)}
    return {"instruction_following": float(ok.mean()), "by_kind": by_kind, "n": int(ok.size), "answers": answers}


def instruction_curve(
    checkpoints: Mapping[str, Any],
    tokenizer=None,
    items: Sequence[ProbeItem] | None = None,
    tokens: Mapping[str, float] | None = None,
    max_new_tokens: int = 8,
    trust_remote_code: bool = False,
):
    """The probe over training: an xarray Dataset over ``checkpoint`` with
    ``instruction_following`` and ``instruction_<kind>``, and ``tokens`` / ``step``
    coordinates (from ``tokens`` or each folder's ``trainer_state.json``).

    ``checkpoints``: name -> model, or name -> Hugging Face folder (loaded from
    safetensors; model code runs only with ``trust_remote_code=True``), in training order.
    """
    import xarray as xr
    from tqdm.auto import tqdm

    from .internal import _training_state, load_causal_lm

    names = list(checkpoints)
    if not names:
        raise ValidationError("instruction_curve(): no checkpoints given")
    items = list(probe_items() if items is None else items)
    rows, steps, toks = [], [], []
    for name in tqdm(names, desc="instruction probe", unit="ckpt", leave=False):
        src = checkpoints[name]
        step, tok = np.nan, np.nan
        if isinstance(src, (str, os.PathLike)):
            step, tok = _training_state(src)
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(str(src))
            model = load_causal_lm(src, trust_remote_code=trust_remote_code)
        else:
            model = src
        if tokenizer is None:
            raise ValidationError("instruction_curve(): a tokenizer is needed when the checkpoints are model objects")
        rows.append(instruction_following(model, tokenizer, items, max_new_tokens))
        steps.append(step)
        toks.append(float(tokens[name]) if tokens is not None and name in tokens else tok)
    data = {"instruction_following": ("checkpoint", [r["instruction_following"] for r in rows])}
    for kind in rows[0]["by_kind"]:
        data[f"instruction_{kind}"] = ("checkpoint", [r["by_kind"].get(kind, np.nan) for r in rows])
    ds = xr.Dataset(data, coords={"checkpoint": names, "step": ("checkpoint", np.asarray(steps, float)),
                                  "tokens": ("checkpoint", np.asarray(toks, float))})
    ds.attrs["probe"] = f"{len(items)} prompts ({', '.join(dict.fromkeys(it.kind for it in items))}), answers scored by form"
    return ds


def ifeval_curve(table, metric: str = "prompt_level_strict_acc"):
    """IFEval over training from lm-evaluation-harness results (:func:`read_lm_eval`'s table):
    a DataArray over ``checkpoint`` of ``metric`` (default prompt-level strict accuracy)."""
    from .downstream import downstream_curves

    sel = table[table["task"] == "ifeval"]
    if sel.empty:
        raise ValidationError(f"no IFEval results (task 'ifeval') in the table (tasks: {sorted(table['task'].unique())})")
    return downstream_curves(sel, metric=metric).sel(task="ifeval").rename(f"ifeval_{metric}")
