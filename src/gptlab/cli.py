"""The `gptlab` command: parses arguments and calls the library; no logic of its own.

    gptlab prepare [SOURCE ...] --out DIR          text -> tokens on disk
    gptlab train --data DIR --out RUN [--preset P] [--key value ...]
    gptlab sample RUN_OR_CHECKPOINT [--prompt TEXT] [--max-new-tokens N] ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gptlab.config import build_config, field_types, preset_names
from gptlab.errors import GptlabError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, where to look) and exit code 2."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message}; see `{self.prog} --help`\n")
        sys.exit(2)


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="turn text into a data directory of tokens", description="Turn text into a data directory of tokens.")
    p.add_argument("sources", nargs="*", help="text files or folders (default: the bundled Shakespeare corpus)")
    p.add_argument("--out", required=True, type=Path, help="data directory to write")
    p.add_argument("--tokenizer", default="char", help="tokenizer kind (default: char)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of the text held out for validation (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed for picking validation documents")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data directory")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> None:
    from gptlab.data.prepare import prepare

    meta = prepare(args.sources, args.out, args.tokenizer, args.val_fraction, args.seed, args.overwrite)
    s = meta["sizes"]
    print(
        f"wrote {args.out}: {meta['tokenizer']['kind']} tokenizer, vocab {meta['tokenizer']['vocab_size']}, "
        f"train {s['train_tokens']:,} tokens ({s['train_documents']} documents), "
        f"val {s['val_tokens']:,} tokens ({s['val_documents']} documents), split by {meta['split']['method']}"
    )


def add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on a data directory",
        description="Train a GPT. Config = preset, then --key value overrides (keys below).",
    )
    p.add_argument("--data", required=True, type=Path, help="data directory from `gptlab prepare`")
    p.add_argument("--out", required=True, type=Path, help="run directory to write (checkpoints, metrics, plots)")
    p.add_argument("--preset", help=f"named recipe: {', '.join(preset_names())}, or a .yaml file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    group = p.add_argument_group("config overrides (--key value)")
    for key, (section, typ) in field_types().items():
        group.add_argument(f"--{key}", dest=f"override_{key}", metavar=typ.__name__.upper(), help=f"{section}.{key}")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> None:
    from gptlab.training.trainer import train

    overrides = {k[len("override_"):]: v for k, v in vars(args).items() if k.startswith("override_") and v is not None}
    cfg = build_config(args.preset, overrides)
    train(cfg, args.data, args.out, overwrite=args.overwrite)


def add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate text from a trained model", description="Generate text from a checkpoint.")
    p.add_argument("checkpoint", type=Path, help="run directory (uses its best checkpoint) or checkpoint directory")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a new document)")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=200, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args) -> None:
    import torch

    from gptlab.device import resolve_device, setup_device
    from gptlab.generation.generate import encode_prompt, generate
    from gptlab.training.checkpoint import load_checkpoint

    if args.max_new_tokens < 0 or args.num_samples < 1:
        raise GptlabError("--max-new-tokens must be >= 0 and --num-samples >= 1")
    device = resolve_device(args.device)
    setup_device(device)
    ckpt = load_checkpoint(args.checkpoint, device)
    tok = ckpt.tokenizer
    prompt = encode_prompt(tok, args.prompt, ckpt.config.model.block_size)
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed if args.seed is not None else torch.seed())
    samples = generate(ckpt.model, prompt, args.max_new_tokens, args.temperature, args.top_k or None, args.num_samples, gen)
    for i, ids in enumerate(samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(args.prompt + tok.decode(ids))


def build_parser() -> Parser:
    parser = Parser(prog="gptlab", description="Build, train, inspect and use GPT-style language models from scratch.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    add_prepare(sub)
    add_train(sub)
    add_sample(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except GptlabError as e:
        if args.debug:
            raise
        print(f"gptlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gptlab {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
