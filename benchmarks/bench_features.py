"""Feature extraction: strided windows vs a naive one-window-per-word extraction.

Both read the same stories with the same randomly initialised GPT-2-shaped model (built
from a config, so the benchmark runs offline) and the same window length; the naive
baseline runs, for every word, one forward pass over the ``context`` tokens ending at
that word (batched the same way, through the bare transformer without the LM head, so it
pays for nothing the strided pass does not). Reported: tokens processed / stimulus
tokens, tokens per second (stimulus tokens / wall time), the speed-up, and the largest
difference between the two on words whose whole left context fits the window (should be
float noise).

    .venv/bin/python benchmarks/bench_features.py                      # CPU defaults
    .venv/bin/python benchmarks/bench_features.py --layers 12 --hidden 768 --heads 12 \\
        --context 512 --stories 10 --device cuda                       # GPU, GPT-2-small shape
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brainalign.features import extract
from brainalign.features.align import align_words
from brainalign.features.extraction import extract_story
from brainalign.features.testing import CORPUS, tiny_checkpoint, tiny_tokenizer
from brainalign.stimulus import Story

STORY_DIR = Path(__file__).resolve().parents[1] / "datasets" / "stories"


def load_stories(n: int) -> list[Story]:
    texts = sorted(STORY_DIR.glob("*.txt"))[:n] if STORY_DIR.is_dir() else []
    words_list = [re.findall(r"[\w'-]+", t.read_text().lower()) for t in texts]
    while len(words_list) < n:  # fall back to a synthetic transcript
        rng = np.random.default_rng(len(words_list))
        vocab = CORPUS.split()
        words_list.append(list(rng.choice(vocab, 450)))
    out = []
    for i, words in enumerate(words_list):
        on = np.arange(len(words)) * 0.35
        out.append(Story(f"story{i}", words, on, on + 0.3, 2.0, np.arange(int(on[-1] // 2)) * 2.0 + 1.0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stories", type=int, default=3)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    stories = load_stories(args.stories)
    tok = tiny_tokenizer([s.text for s in stories], vocab_size=2000)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = tiny_checkpoint(Path(tmp) / "gpt2", "gpt2", n_layers=args.layers, hidden=args.hidden,
                               heads=args.heads, positions=max(1024, args.context + 1), tokenizer=tok)
        # warm-up (first-call kernels), not timed
        extract(stories[:1], model=ckpt, context_tokens=args.context, cache=False, device=args.device,
                dtype=args.dtype, layers=[0], batch_size=args.batch_size, progress=False)
        t0 = time.perf_counter()
        fs = extract(stories, model=ckpt, context_tokens=args.context, cache=False, device=args.device,
                     dtype=args.dtype, batch_size=args.batch_size, progress=False)
        t_strided = time.perf_counter() - t0
        n_stim, n_strided = fs.info["stimulus_tokens"], fs.info["tokens_processed"]

        from transformers import AutoModelForCausalLM

        from brainalign.features.loading import resolve_device

        dev, dt = resolve_device(args.device, args.dtype)
        base = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dt).to(dev).eval().base_model
        bs = args.batch_size or (16 if dev.type == "cuda" else 4)
        t0 = time.perf_counter()
        n_naive, diff = 0, 0.0
        for s in stories:
            arr, met = extract_story(base, tok, "encoder", s, fs.layers, context_tokens=args.context,
                                     stride=None, batch_size=bs, progress=False)
            n_naive += met["tokens_processed"]
            al = align_words(s.words, tok)
            fits = al.word_last < args.context
            for layer in fs.layers:
                diff = max(diff, float(np.abs(arr[layer][fits] - fs.get(s.name, layer)[fits]).max()))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t_naive = time.perf_counter() - t0
    res = {
        "device": str(dev) + (f" ({torch.cuda.get_device_name()})" if dev.type == "cuda" else f" ({torch.get_num_threads()} threads)"),
        "dtype": str(dt).replace("torch.", ""),
        "model": f"gpt2 {args.layers}x{args.hidden}",
        "context": args.context,
        "stories": len(stories),
        "words": sum(s.n_words for s in stories),
        "stimulus_tokens": n_stim,
        "strided_tokens_ratio": round(n_strided / n_stim, 3),
        "naive_tokens_ratio": round(n_naive / n_stim, 2),
        "strided_tokens_per_s": round(n_stim / t_strided, 1),
        "naive_tokens_per_s": round(n_stim / t_naive, 1),
        "speedup": round(t_naive / t_strided, 1),
        "max_abs_diff_full_context_words": diff,
        "strided_s": round(t_strided, 2),
        "naive_s": round(t_naive, 2),
    }
    print(json.dumps(res, indent=1))
    print(
        f"| {res['device']} | {res['dtype']} | {res['model']} | {res['context']} | {res['stimulus_tokens']} | "
        f"{res['strided_tokens_ratio']} | {res['naive_tokens_ratio']} | {res['strided_tokens_per_s']} | "
        f"{res['naive_tokens_per_s']} | {res['speedup']}x | {diff:.1e} |"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
