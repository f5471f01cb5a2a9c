"""``brainalign train-tiny``: train a tiny GPT-NeoX with log-spaced checkpoints."""

from __future__ import annotations

import argparse


from ..errors import ValidationError


def _task(args: argparse.Namespace):
    """The task of ``--task`` with the options given on the command line (the task's
    defaults otherwise, so that a run trained before an option existed is reused)."""
    from .tasks import InductionTask, ModularAdditionTask

    given = lambda **kw: {k: v for k, v in kw.items() if v is not None}
    if args.task == "modular":
        if args.vocab_size is not None or args.seq_len is not None:
            raise ValidationError("train-tiny --task modular: --vocab-size and --seq-len do not apply "
                                  "(the vocabulary is the residues of --modulus, and a sequence is 'a b = c')")
        if args.modulus is not None and args.modulus < 2:
            raise ValidationError(f"train-tiny --modulus must be at least 2, got {args.modulus}")
        if args.train_fraction is not None and not 0 < args.train_fraction < 1:
            raise ValidationError(f"train-tiny --train-fraction must be in (0, 1), got {args.train_fraction}")
        return ModularAdditionTask(**given(p=args.modulus, train_fraction=args.train_fraction,
                                           split_swaps=args.split_swaps or None))
    if args.modulus is not None or args.train_fraction is not None or args.split_swaps:
        raise ValidationError(f"train-tiny --task {args.task}: --modulus, --train-fraction and --split-swaps "
                              "apply to --task modular only")
    if args.vocab_size is not None and args.vocab_size < 2:
        raise ValidationError(f"train-tiny --vocab-size must be at least 2, got {args.vocab_size}")
    return InductionTask(**given(vocab=args.vocab_size, seq_len=args.seq_len))


def _train_task(args: argparse.Namespace) -> int:
    from .tasks import train_task

    if args.intermediate is not None and args.intermediate < 1:
        raise ValidationError(f"train-tiny --intermediate must be a positive number of units, got {args.intermediate}")
    if not (args.init_scale > 0 and args.init_scale != float("inf")):
        raise ValidationError(f"train-tiny --init-scale must be a positive number, got {args.init_scale}")
    run = train_task(
        _task(args), args.out, n_layers=args.layers, hidden=args.hidden, heads=args.heads, steps=args.steps,
        batch_size=args.batch_size, checkpoints=args.checkpoints, lr=args.lr, seed=args.seed, overwrite=args.overwrite,
        weight_decay=(1.0 if args.task == "modular" else 0.1) if args.weight_decay is None else args.weight_decay,
        init_scale=args.init_scale, intermediate=args.intermediate,
    )
    print(f"{'checkpoint':>18} {'tokens':>12} {'train acc':>9} {'held-out acc':>12} {'memorisation':>12} {'|θ|':>7}")
    for r in run.log:
        print(f"{r['name']:>18} {r['tokens']:12.4g} {r['train_acc']:9.3f} {r['heldout_acc']:12.3f} "
              f"{r['memorisation']:12.3f} {r['param_norm']:7.2f}")
    print(f"checkpoints and training_log.json in {run.out_dir}")
    return 0


def _train_tiny(args: argparse.Namespace) -> int:
    from .tiny import train_tiny

    if args.task != "text":
        if args.corpus is not None:
            raise ValidationError(f"train-tiny --task {args.task} takes no corpus (got {args.corpus!r})")
        return _train_task(args)
    if args.corpus is None:
        raise ValidationError("train-tiny: a corpus (.txt file or folder) is needed for --task text")
    if args.intermediate is not None:
        raise ValidationError("train-tiny --intermediate applies to --task induction/modular, not to --task text")
    if args.init_scale != 1:
        raise ValidationError(f"train-tiny --init-scale applies to --task induction/modular, not to --task text (got {args.init_scale})")
    if args.modulus is not None or args.train_fraction is not None or args.split_swaps:
        raise ValidationError("train-tiny --modulus, --train-fraction and --split-swaps apply to --task modular, not to --task text")
    run = train_tiny(
        args.corpus,
        args.out,
        n_layers=args.layers,
        hidden=args.hidden,
        heads=args.heads,
        steps=args.steps,
        batch_size=args.batch_size,
        checkpoints=args.checkpoints,
        lr=args.lr,
        seed=args.seed,
        overwrite=args.overwrite,
        # only what was given: train_tiny's own defaults otherwise
        **{k: v for k, v in {"seq_len": args.seq_len, "vocab_size": args.vocab_size,
                             "weight_decay": args.weight_decay}.items() if v is not None},
    )
    print(f"{'checkpoint':>18} {'tokens':>12} {'train':>7} {'held-out':>8} {'gap':>6} {'|θ|':>7}")
    for r in run.log:
        print(f"{r['name']:>18} {r['tokens']:12.4g} {r['train_loss']:7.3f} {r['heldout_loss']:8.3f} {r['gap']:6.3f} {r['param_norm']:7.2f}")
    print(f"checkpoints and training_log.json in {run.out_dir}")
    return 0


def register_train_tiny(subparsers) -> None:
    """Add the ``train-tiny`` subcommand to the ``brainalign`` command."""
    p = subparsers.add_parser("train-tiny", help="train a tiny GPT-NeoX on a text corpus, log-spaced checkpoints")
    p.add_argument("corpus", nargs="?", help="a .txt file or a folder of .txt files (for --task text)")
    p.add_argument("--task", choices=["text", "induction", "modular"], default="text",
                   help="text: the corpus (default); induction: repeated random segments (induction heads form); "
                        "modular: a + b mod p (memorised before it generalises)")
    p.add_argument("-o", "--out", default="tiny-gpt-neox", help="output folder (default: %(default)s)")
    p.add_argument("--steps", type=int, default=500, help="optimiser steps (default: %(default)s)")
    p.add_argument("--checkpoints", type=int, default=10, help="log-spaced, step 0 included (default: %(default)s)")
    p.add_argument("--layers", type=int, default=2, help="transformer layers (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=64, help="model width (default: %(default)s)")
    p.add_argument("--heads", type=int, default=4, help="attention heads per layer (default: %(default)s)")
    p.add_argument("--intermediate", type=int, default=None,
                   help="MLP width, for --task induction/modular (default: 4 x --hidden)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="tokens per sequence (default: 128 for text, 48 for induction)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="sequences per step (default: %(default)s; --task modular trains on all its pairs at once)")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="AdamW weight decay (default: 1.0 for modular, 0.1 for induction, 0.01 for text)")
    p.add_argument("--init-scale", type=float, default=1.0,
                   help="multiply the initial weight matrices by this for --task induction/modular; with a large "
                        "weight decay this delays generalisation until the decay has shrunk the weights (grokking; "
                        "examples/grokking.py's recipe: --task modular --modulus 23 --train-fraction 0.85 "
                        "--split-swaps --layers 1 --steps 3000 --checkpoints 30 --lr 1e-2 --init-scale 3) "
                        "(default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="tokenizer size for text (default 512); the number of distinct tokens for induction (default 32)")
    p.add_argument("--modulus", type=int, default=None, help="p of --task modular (default 53)")
    p.add_argument("--train-fraction", type=float, default=None,
                   help="fraction of the p^2 pairs trained on, for --task modular (default 0.4)")
    p.add_argument("--split-swaps", action="store_true",
                   help="--task modular: keep a pair (a, b) and its swap (b, a) on the same side of the split, so "
                        "that memorising scores 0 on the held-out pairs")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the data (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace another run's checkpoints in the folder")
    p.set_defaults(func=_train_tiny)


register = register_train_tiny
