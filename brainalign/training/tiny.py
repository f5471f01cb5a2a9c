"""A tiny GPT-NeoX trained on a text corpus, with log-spaced checkpoints, for
controlled studies and the demo.

The tokenizer is a small byte-level BPE trained on the corpus with the ``tokenizers``
library (saved as a fast tokenizer, so ``AutoTokenizer.from_pretrained`` reads it
back).  A corpus-sized vocabulary (512 by default) keeps the embedding and the output
softmax small, which is most of the cost of such a model on a CPU; the MiniLM
WordPiece vocabulary (30,522 entries) would make every step ~50x more expensive in the
output layer alone, and byte-level BPE never meets an unknown word.

Each checkpoint is a Hugging Face folder ``checkpoint-{step}`` (safetensors weights,
config, tokenizer files, and a ``trainer_state.json`` with ``global_step`` and
``num_input_tokens_seen`` as the ``transformers`` Trainer writes it); the run's
``training_log.json`` lists training loss, held-out loss, their gap and the parameter
norm at each checkpoint, and describes the corpus (``corpus``: source folder or file,
file names, word count).  Step 0 (the untrained model) is always saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._io import atomic_path, atomic_write_json
from ..errors import DataNotFoundError, ValidationError

log = logging.getLogger(__name__)

__all__ = ["train_tiny", "TinyRun", "checkpoint_steps", "describe_corpus", "tiny_gpt_neox", "train_bpe_tokenizer", "read_corpus"]

_EOS = "<|endoftext|>"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TinyRun:
    """What :func:`train_tiny` wrote.

    Attributes
    ----------
    out_dir : Path
    checkpoints : dict
        ``checkpoint-{step}`` -> folder, in training order.
    log : list of dict
        Per checkpoint: ``name``, ``step``, ``tokens``, ``train_loss``,
        ``heldout_loss``, ``gap`` (held-out minus training loss), ``param_norm``.
    config : dict
    """

    out_dir: Path
    checkpoints: dict[str, Path]
    log: list[dict]
    config: dict = field(default_factory=dict)

    @property
    def steps(self) -> dict[str, int]:
        return {r["name"]: int(r["step"]) for r in self.log}

    @property
    def tokens(self) -> dict[str, float]:
        """Training tokens seen at each checkpoint (step x batch x sequence length)."""
        return {r["name"]: float(r["tokens"]) for r in self.log}

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.log)


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """``n`` log-spaced steps from 0 (untrained) to ``steps`` (fewer when small step
    counts make neighbours round to the same integer)."""
    if steps < 1 or n < 2:
        raise ValidationError(f"checkpoint_steps(): need steps >= 1 and n >= 2, got steps={steps}, n={n}")
    rest = np.unique(np.round(np.geomspace(1, steps, n - 1)).astype(int)) if n > 2 else np.array([steps])
    return [0, *[int(s) for s in rest]]


def describe_corpus(corpus: str | os.PathLike | Sequence[str], docs: Sequence[str]) -> dict:
    """Where a corpus came from, for the training log: ``source`` (the folder or file,
    absolute, or ``"texts"`` for texts passed directly), ``files`` (names of the
    ``.txt`` files read from a folder), ``documents`` and ``words``."""
    source, files = "texts", []
    if not isinstance(corpus, (list, tuple)):
        s = str(corpus)
        p = Path(s) if "\n" not in s and len(s) < 4096 else None
        if p is not None and p.is_dir():
            source, files = str(p.resolve()), [str(f.relative_to(p)) for f in sorted(p.rglob("*.txt"))]
        elif p is not None and p.is_file():
            source, files = str(p.resolve()), [p.name]
    return {"source": source, "files": files, "documents": len(docs), "words": sum(len(d.split()) for d in docs)}


def read_corpus(corpus: str | os.PathLike | Sequence[str]) -> list[str]:
    """Documents of a corpus: a list of texts, a text file, a folder of ``.txt``
    files, or (a str that names no file) the text itself."""
    if isinstance(corpus, (list, tuple)):
        docs = [str(d) for d in corpus]
    else:
        s = str(corpus)
        looks_like_path = isinstance(corpus, os.PathLike) or ("\n" not in s and len(s) < 4096 and (
            s.endswith((".txt", ".md")) or os.sep in s))
        p = Path(s) if "\n" not in s and len(s) < 4096 else None
        if p is not None and p.is_dir():
            files = sorted(p.rglob("*.txt"))
            if not files:
                raise DataNotFoundError(f"corpus folder {p} holds no .txt files")
            docs = [f.read_text(encoding="utf-8") for f in files]
        elif p is not None and p.is_file():
            docs = [p.read_text(encoding="utf-8")]
        elif looks_like_path:
            raise DataNotFoundError(f"corpus file {s} does not exist")
        else:
            docs = [s]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValidationError("corpus is empty")
    return docs


def train_bpe_tokenizer(docs: Sequence[str], vocab_size: int = 512):
    """A byte-level BPE fast tokenizer trained on ``docs`` (``<|endoftext|>`` as
    bos/eos/pad), as a ``transformers.PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size),
        min_frequency=2,
        special_tokens=[_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(docs), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=_EOS, eos_token=_EOS, pad_token=_EOS, unk_token=None)


def tiny_gpt_neox(
    vocab_size: int,
    n_layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    max_len: int = 128,
    intermediate: int | None = None,
    seed: int = 0,
    eos_token_id: int | None = None,
):
    """An untrained ``GPTNeoXForCausalLM`` (eager attention, full rotary, no dropout).
    ``intermediate`` defaults to ``4 * hidden``; a tiny value (e.g. 4) makes it nearly
    attention-only."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    if hidden % heads:
        raise ValidationError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    cfg = GPTNeoXConfig(
        vocab_size=int(vocab_size),
        hidden_size=int(hidden),
        num_hidden_layers=int(n_layers),
        num_attention_heads=int(heads),
        intermediate_size=int(intermediate or 4 * hidden),
        max_position_embeddings=int(max_len),
        rotary_pct=1.0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(cfg)


def _eval_loss(model, windows) -> float:
    import torch

    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for w in windows:
            out = model(w, labels=w)
            tot += float(out.loss) * w.shape[0]
            n += w.shape[0]
    model.train()
    return tot / n


def _fixed_windows(stream, seq_len: int, n: int, batch_size: int):
    import torch

    starts = np.linspace(0, len(stream) - seq_len - 1, num=max(1, n)).astype(int)
    X = torch.stack([stream[s : s + seq_len] for s in starts])
    return list(X.split(batch_size))


def save_checkpoint(model, tokenizer, out: Path, rec: dict, records: list[dict], steps: int, batch_size: int) -> Path:
    """Write ``out/<rec name>`` atomically: safetensors weights, config, tokenizer and a
    ``trainer_state.json`` as the ``transformers`` Trainer writes it (``global_step``,
    ``num_input_tokens_seen``, the log so far)."""
    with atomic_path(out / rec["name"], directory=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        state = {
            "global_step": rec["step"], "max_steps": steps, "num_input_tokens_seen": int(rec["tokens"]),
            "train_batch_size": batch_size, "log_history": [dict(r) for r in records],
        }
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    return out / rec["name"]


def prepare_run_folder(out: Path, config: dict, overwrite: bool) -> TinyRun | None:
    """A finished run of the same ``config`` in ``out`` to reuse, else ``out`` emptied of
    another run's checkpoints (only with ``overwrite``; a refusal naming the folder
    otherwise) and created."""
    log_path = out / "training_log.json"
    if log_path.is_file():
        prev = json.loads(log_path.read_text())
        if prev.get("complete") and prev.get("config") == config and all((out / r["name"]).is_dir() for r in prev["checkpoints"]):
            log.info("reusing the finished run in %s", out)
            return TinyRun(out, {r["name"]: out / r["name"] for r in prev["checkpoints"]}, prev["checkpoints"], config)
    existing = sorted(p for p in out.iterdir() if _CKPT.match(p.name)) if out.is_dir() else []
    if existing or log_path.is_file():
        if not overwrite:
            raise ValidationError(
                f"{out} already holds checkpoints of another or an unfinished run; pass overwrite=True "
                "(--overwrite) to replace them, or choose another folder"
            )
        for p in existing:
            shutil.rmtree(p)
        log_path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return None


def _token_streams(docs: Sequence[str], vocab_size: int, heldout: float, seq_len: int):
    """(tokenizer, eos id, training stream, held-out stream): a BPE trained on ``docs``,
    their tokens joined by ``<|endoftext|>``, the last ``heldout`` fraction held out."""
    import torch

    tokenizer = train_bpe_tokenizer(docs, vocab_size)
    eos = tokenizer.convert_tokens_to_ids(_EOS)
    ids: list[int] = []
    for d in docs:
        ids.extend(tokenizer(d, add_special_tokens=False)["input_ids"])
        ids.append(eos)
    stream = torch.tensor(ids, dtype=torch.long)
    n_held = int(len(stream) * heldout)
    train_s, held_s = stream[: len(stream) - n_held], stream[len(stream) - n_held :]
    if len(train_s) < 2 * seq_len + 2 or len(held_s) < seq_len + 2:
        raise ValidationError(
            f"corpus too small: {len(stream)} tokens for seq_len={seq_len} (need > {int((2 * seq_len + 2) / (1 - heldout))}, "
            f"of which {heldout:.0%} held out)"
        )
    return tokenizer, eos, train_s, held_s


def train_tiny(
    corpus: str | os.PathLike | Sequence[str],
    out_dir: str | os.PathLike,
    n_layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    seq_len: int = 128,
    steps: int = 500,
    batch_size: int = 16,
    checkpoints: int = 10,
    lr: float = 3e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    vocab_size: int = 512,
    heldout: float = 0.1,
    eval_windows: int = 64,
    threads: int | None = 1,
    overwrite: bool = False,
) -> TinyRun:
    """Train a tiny GPT-NeoX on a text corpus, saving log-spaced checkpoints.

    Parameters
    ----------
    corpus : str, path or list of str
        Texts (see :func:`read_corpus`).  The last ``heldout`` fraction of the token
        stream is held out.
    out_dir : path
        Gets ``checkpoint-{step}`` folders and ``training_log.json``.  A finished run
        with the same settings and corpus is reused, not retrained.
    steps, batch_size, seq_len : int
        Tokens seen at step ``s`` are ``s * batch_size * seq_len``.
    checkpoints : int
        Number of checkpoints, log-spaced, step 0 (untrained) included.
    lr, weight_decay : float
        AdamW; linear warm-up over the first 5% of steps, cosine decay to lr/10.
    seed : int
        Seeds the initialisation and the batches: a run is reproducible.
    threads : int or None
        torch CPU threads while training (1 is fastest for such small matrices on a
        shared machine, and deterministic); None leaves torch's setting.
    overwrite : bool
        Replace checkpoints of a different or unfinished run in ``out_dir``.

    Returns
    -------
    TinyRun
    """
    import torch
    from tqdm.auto import tqdm

    docs = read_corpus(corpus)
    if not 0 < heldout < 0.5:
        raise ValidationError(f"heldout must be in (0, 0.5), got {heldout}")
    if steps < 1 or batch_size < 1 or seq_len < 8:
        raise ValidationError(f"need steps >= 1, batch_size >= 1, seq_len >= 8 (got {steps}, {batch_size}, {seq_len})")
    out = Path(out_dir)
    config = {
        "n_layers": n_layers, "hidden": hidden, "heads": heads, "seq_len": seq_len, "steps": steps,
        "batch_size": batch_size, "checkpoints": checkpoints, "lr": lr, "weight_decay": weight_decay,
        "seed": seed, "vocab_size": vocab_size, "heldout": heldout, "eval_windows": eval_windows,
        "corpus_sha256": hashlib.sha256("\x00".join(docs).encode()).hexdigest(),
    }
    corpus_info = describe_corpus(corpus, docs)
    log_path = out / "training_log.json"
    reused = prepare_run_folder(out, config, overwrite)
    if reused is not None:
        return reused

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        tokenizer, eos, train_s, held_s = _token_streams(docs, vocab_size, heldout, seq_len)
        model = tiny_gpt_neox(len(tokenizer), n_layers, hidden, heads, seq_len, seed=seed, eos_token_id=eos)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
        warm = max(1, int(0.05 * steps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warm if s < warm else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
        )
        train_eval = _fixed_windows(train_s, seq_len, eval_windows, batch_size)
        held_eval = _fixed_windows(held_s, seq_len, min(eval_windows, max(1, len(held_s) - seq_len - 1)), batch_size)
        gen = torch.Generator().manual_seed(seed)
        save_at = checkpoint_steps(steps, checkpoints)
        records: list[dict] = []
        model.train()

        def save(step: int) -> None:
            name = f"checkpoint-{step}"
            rec = {
                "name": name,
                "step": step,
                "tokens": float(step * batch_size * seq_len),
                "train_loss": _eval_loss(model, train_eval),
                "heldout_loss": _eval_loss(model, held_eval),
                "param_norm": float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters()))),
                "lr": float(sched.get_last_lr()[0]),
            }
            rec["gap"] = rec["heldout_loss"] - rec["train_loss"]
            records.append(rec)
            save_checkpoint(model, tokenizer, out, rec, records, steps, batch_size)
            atomic_write_json(log_path, {"complete": False, "config": config, "corpus": corpus_info,
                                         "tokens_per_step": batch_size * seq_len, "checkpoints": records})
            log.info("%s: train loss %.3f, held-out %.3f, |θ| %.1f", name, rec["train_loss"], rec["heldout_loss"], rec["param_norm"])

        save(0)
        hi = len(train_s) - seq_len - 1
        bar = tqdm(range(1, steps + 1), desc="train-tiny", unit="step", leave=False)
        for step in bar:
            starts = torch.randint(0, hi + 1, (batch_size,), generator=gen)
            x = torch.stack([train_s[s : s + seq_len] for s in starts.tolist()])
            loss = model(x, labels=x).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if step in save_at:
                save(step)
                bar.set_postfix(loss=f"{records[-1]['train_loss']:.3f}")
        atomic_write_json(log_path, {"complete": True, "config": config, "corpus": corpus_info,
                                     "tokens_per_step": batch_size * seq_len, "checkpoints": records})
    finally:
        torch.set_num_threads(old_threads)
    return TinyRun(out, {r["name"]: out / r["name"] for r in records}, records, config)
