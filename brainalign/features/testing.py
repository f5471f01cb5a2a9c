"""Tiny real checkpoints for tests, benchmarks and demos (built offline, in seconds).

:func:`tiny_tokenizer` trains a byte-level BPE (GPT-2 style, every character encodable)
on a small text; :func:`tiny_checkpoint` builds a randomly initialised GPT-2 / GPT-NeoX
/ BERT from a config and saves it with ``save_pretrained`` (safetensors) next to the
fast tokenizer; :func:`tiny_hub_cache` lays several revisions out as a Hugging Face hub
cache (``models--org--name/{blobs,refs,snapshots}``), exactly as ``huggingface_hub``
writes it, so the real ``from_pretrained(..., revision=...)`` code path loads them
offline.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

__all__ = ["tiny_tokenizer", "tiny_checkpoint", "tiny_hub_cache", "CORPUS"]

CORPUS = (
    "the quick brown fox jumps over the lazy dog and i don't think it's well-known that "
    "in 1999 she paid 3.5 dollars for a café au lait in zürich while the naïve über-fan "
    "said hello to everyone there was a story about a man who went to the river and "
    "found a boat so he sailed away into the night with his friends they were happy "
    "antidisestablishmentarianism is a very long word we'll see what happens next "
)


def tiny_tokenizer(corpus: str | Sequence[str] = CORPUS, vocab_size: int = 400):
    """A fast byte-level BPE tokenizer trained on ``corpus`` (a transformers tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    texts = [corpus] if isinstance(corpus, str) else list(corpus)
    tk.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
        model_max_length=1024,
    )


def tiny_checkpoint(
    path: str | os.PathLike,
    arch: str = "gpt2",
    *,
    seed: int = 0,
    n_layers: int = 2,
    hidden: int = 32,
    heads: int = 2,
    positions: int = 256,
    tokenizer=None,
) -> Path:
    """Save a tiny randomly initialised ``arch`` ("gpt2", "gpt_neox" or "bert") to ``path``."""
    import torch
    from transformers import (
        BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
    )

    tok = tokenizer if tokenizer is not None else tiny_tokenizer()
    v = len(tok)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=v, n_positions=positions, n_embd=hidden, n_layer=n_layers, n_head=heads,
                         bos_token_id=0, eos_token_id=0)
        cls = GPT2LMHeadModel
    elif arch == "gpt_neox":
        cfg = GPTNeoXConfig(vocab_size=v, max_position_embeddings=positions, hidden_size=hidden,
                            num_hidden_layers=n_layers, num_attention_heads=heads, intermediate_size=4 * hidden,
                            bos_token_id=0, eos_token_id=0)
        cls = GPTNeoXForCausalLM
    elif arch == "bert":
        cfg = BertConfig(vocab_size=v, max_position_embeddings=positions, hidden_size=hidden,
                         num_hidden_layers=n_layers, num_attention_heads=heads, intermediate_size=4 * hidden)
        cls = BertModel
    else:
        raise ValueError(f"arch must be 'gpt2', 'gpt_neox' or 'bert', got {arch!r}")
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def tiny_hub_cache(
    cache_dir: str | os.PathLike,
    repo_id: str,
    revisions: Sequence[str],
    arch: str = "gpt_neox",
    **kwargs,
) -> dict[str, str]:
    """Write ``repo_id`` under ``revisions`` into a hub cache folder; returns {revision: commit}.

    Each revision is a different random initialisation (seed = its index). Files go to
    ``blobs/<sha256>`` with ``snapshots/<commit>/<file>`` symlinks (copies where
    symlinks are not allowed) and ``refs/<revision>`` holding the commit hash.
    """
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    tok = kwargs.pop("tokenizer", None) or tiny_tokenizer()
    commits = {}
    for i, rev in enumerate(revisions):
        tmp = repo / ".build" / str(i)
        tiny_checkpoint(tmp, arch, seed=i, tokenizer=tok, **kwargs)
        commit = hashlib.sha1(f"{repo_id}@{rev}".encode()).hexdigest()
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True, exist_ok=True)
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp.iterdir()):
            data = f.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            if not blob.exists():
                blob.write_bytes(data)
            link = snap / f.name
            try:
                link.symlink_to(os.path.relpath(blob, snap))
            except OSError:
                shutil.copyfile(blob, link)
        ref = repo / "refs" / rev
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
        commits[rev] = commit
    shutil.rmtree(repo / ".build", ignore_errors=True)
    return commits
