"""``brainalign train-tiny``: train a tiny GPT-NeoX with log-spaced checkpoints."""

from __future__ import annotations

import argparse


from ..errors import ValidationError


def _train_task(args: argparse.Namespace) -> int:
    from .tasks import train_task

    run = train_task(
        args.task, args.out, n_layers=args.layers, hidden=args.hidden, heads=args.heads, steps=args.steps,
        batch_size=args.batch_size, checkpoints=args.checkpoints, lr=args.lr, seed=args.seed, overwrite=args.overwrite,
        weight_decay=(1.0 if args.task == "modular" else 0.1) if args.weight_decay is None else args.weight_decay,
        init_scale=args.init_scale,
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
    if args.init_scale != 1:
        raise ValidationError(f"train-tiny --init-scale applies to --task induction/modular, not to --task text (got {args.init_scale})")
    run = train_tiny(
        args.corpus,
        args.out,
        n_layers=args.layers,
        hidden=args.hidden,
        heads=args.heads,
        seq_len=args.seq_len,
        steps=args.steps,
        batch_size=args.batch_size,
        checkpoints=args.checkpoints,
        lr=args.lr,
        seed=args.seed,
        vocab_size=args.vocab_size,
        overwrite=args.overwrite,
        **({} if args.weight_decay is None else {"weight_decay": args.weight_decay}),
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
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--checkpoints", type=int, default=10, help="log-spaced, step 0 included (default: %(default)s)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=None,
                   help="AdamW weight decay (default: 1.0 for modular, 0.1 for induction, 0.01 for text)")
    p.add_argument("--init-scale", type=float, default=1.0,
                   help="multiply the initial weight matrices by this for --task induction/modular; with a large "
                        "weight decay, 3 makes grokking robust (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace another run's checkpoints in the folder")
    p.set_defaults(func=_train_tiny)


register = register_train_tiny
