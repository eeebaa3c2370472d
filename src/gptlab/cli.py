"""The `gptlab` command: parses arguments and calls the library; no logic of its own.

    gptlab prepare [SOURCE ...] --out DIR          text -> tokens on disk
    gptlab train --data DIR --out RUN [--preset P] [--key value ...]
    gptlab sample RUN_OR_CHECKPOINT [--prompt TEXT] [--max-new-tokens N] ...
    gptlab chat RUN_OR_CHECKPOINT [--temperature T] ...      the >: console
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


def add_sampling_args(p) -> None:
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=200, help="sample among the k most likely tokens (0 = all; default 200)")
    p.add_argument("--top-p", type=float, default=None, help="sample among the most likely tokens whose probability reaches p")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 makes tokens already in the text less likely")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="end the text where TEXT appears (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="fix the random seed for a reproducible sample")
    p.add_argument("--device", default="auto")


def load_text_generator(args):
    from gptlab.generation import load

    return load(
        args.checkpoint, args.device, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
        top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=tuple(args.stop), seed=args.seed,
    )


def add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate text from a trained model", description="Generate text from a checkpoint.")
    p.add_argument("checkpoint", type=Path, help="run directory (uses its best checkpoint) or checkpoint directory")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a new document)")
    p.add_argument("--num-samples", type=int, default=1, help="samples generated together as one batch")
    add_sampling_args(p)
    p.set_defaults(func=cmd_sample)


def cmd_sample(args) -> None:
    lm = load_text_generator(args)
    if args.num_samples == 1:  # stream: text appears as it is generated
        print(args.prompt, end="", flush=True)
        for piece in lm.stream(args.prompt):
            print(piece, end="", flush=True)
        print()
        return
    for i, text in enumerate(lm.generate_batch(args.prompt, args.num_samples)):
        print(f"--- sample {i + 1}")
        print(args.prompt + text)


def add_chat(sub) -> None:
    p = sub.add_parser("chat", help="talk to a trained model at a >: prompt", description="An interactive console: "
                       "the model continues what you type, streaming; /help inside lists the commands.")
    p.add_argument("checkpoint", type=Path, help="run directory (uses its best checkpoint) or checkpoint directory")
    add_sampling_args(p)
    p.set_defaults(func=cmd_chat)


def cmd_chat(args) -> None:
    from gptlab.generation.console import Console, enable_line_editing

    lm = load_text_generator(args)
    if sys.stdin.isatty():
        enable_line_editing()
    Console(lm).run()


def build_parser() -> Parser:
    parser = Parser(prog="gptlab", description="Build, train, inspect and use GPT-style language models from scratch.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    add_prepare(sub)
    add_train(sub)
    add_sample(sub)
    add_chat(sub)
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
