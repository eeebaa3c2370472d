"""The `gptlab` command: parses arguments and calls the library; no logic of its own.

gptlab prepare [SOURCE ...] --out DIR          text -> tokens on disk
gptlab tokenize TEXT [--tokenizer KIND | --data DIR]   how a text splits into tokens
gptlab train --data DIR --out RUN [--preset P] [--init-from CKPT] [--key value ...]
gptlab train --resume RUN [--key value ...]     continue an interrupted run exactly
gptlab sample RUN_OR_CHECKPOINT [--prompt TEXT] [--max-new-tokens N] ...
gptlab chat RUN_OR_CHECKPOINT [--temperature T] ...      the >: console
gptlab info PRESET_OR_CONFIG_OR_CHECKPOINT [--batch-size N] [--vocab-size N] [--parallel fsdp --world-size N]
gptlab eval RUN_OR_CHECKPOINT [--text FILE ...]   loss, perplexity, bits per char/byte
gptlab inspect RUN_OR_CHECKPOINT --out DIR [--prompt TEXT] [--compare RUN ...]   pictures
gptlab report RUN                                 one Markdown page about a run
gptlab sweep --data DIR --out SWEEP --param KEY=KIND:ARGS ... [--trials N] [--search tpe|random|grid] [--prune]
gptlab compare RUN ...                            runs side by side, sorted by best val loss
gptlab import-gpt2 HF_DIR --out CHECKPOINT     Hugging Face GPT-2 directory -> gptlab checkpoint
gptlab export-hf RUN_OR_CHECKPOINT OUT_DIR     gptlab checkpoint -> Hugging Face directory
gptlab serve RUN_OR_CHECKPOINT [--host H] [--port N] [--api-key KEY]   OpenAI-compatible HTTP API

Flags are spelled with dashes (--max-new-tokens, --max-iters); the underscore spelling
(--max_iters) is accepted everywhere too.
"""

from __future__ import annotations

import argparse
import difflib
import os
import signal
import sys
import threading
from pathlib import Path

from gptlab.config import build_config, field_ranges, field_types, preset_names
from gptlab.errors import GptlabError, Terminated, os_error_message


def dashed(argv: list[str]) -> list[str]:
    """--max_iters -> --max-iters (and --max_iters=5 -> --max-iters=5): the one flag style, whichever
    the user typed. Values are left alone, and so is everything after a bare `--`."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            out[i] = name.replace("_", "-") + eq + value
    return out


class Parser(argparse.ArgumentParser):
    """argparse with one flag style (dashes; underscores are read as dashes), and usage errors that
    are one line naming the verb's own --help, with exit code 2."""

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(dashed(sys.argv[1:] if args is None else list(args)), namespace)

    def parse_args(self, args=None, namespace=None):
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            verbs = next((a.choices for a in self._actions if isinstance(a, argparse._SubParsersAction)), {})
            verb = verbs.get(getattr(ns, "command", None), self)
            flags = [o for o in verb._option_string_actions if o.startswith("--")]
            near = difflib.get_close_matches(extras[0].partition("=")[0], flags, n=1)
            verb.error(f"unrecognized arguments: {' '.join(extras)}" + (f" (did you mean {near[0]}?)" if near else ""))
        return ns

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message}; see `{self.prog} --help`\n")
        sys.exit(2)


def add_tokenizer_args(p, default: str | None, default_text: str | None = None) -> None:
    from gptlab.tokenizers import KINDS

    g = p.add_argument_group("tokenizer")
    g.add_argument(
        "--tokenizer", default=default, choices=KINDS, help=f"tokenizer kind (default: {default_text or default})"
    )
    g.add_argument("--vocab-size", type=int, help="bpe: vocabulary size to train (default 4096)")
    g.add_argument(
        "--min-freq", type=int, help="word: keep words seen at least this often (default 1); rarer ones become <unk>"
    )
    g.add_argument("--max-vocab", type=int, help="word: keep at most this many tokens, the most frequent words")
    g.add_argument(
        "--tokenizer-file",
        type=Path,
        help="gpt2: local gpt2.tiktoken, or vocab.json with merges.txt beside it (offline)",
    )


def tokenizer_options(args) -> dict:
    return {
        "vocab_size": args.vocab_size,
        "min_freq": args.min_freq,
        "max_vocab": args.max_vocab,
        "tokenizer_file": args.tokenizer_file,
    }


def add_source_args(p) -> None:
    g = p.add_argument_group("reading and cleaning (every cleaning rule is off unless given, and reported)")
    g.add_argument(
        "--encoding-errors",
        choices=["strict", "replace"],
        default="strict",
        help="invalid UTF-8: stop with the file and byte offset (strict), or replace with U+FFFD",
    )
    g.add_argument("--strip-gutenberg", action="store_true", help="drop Project Gutenberg headers and license footers")
    g.add_argument("--normalize", choices=["NFC", "NFKC"], help="Unicode normalisation")
    g.add_argument("--drop-lines", metavar="REGEX", help="drop lines matching this regular expression")
    g.add_argument("--lowercase", action="store_true")
    g.add_argument(
        "--keep-chars",
        metavar="CLASS",
        help="keep only these characters, a regex class body such as 'a-z .,!?' (line breaks stay)",
    )
    g.add_argument(
        "--collapse-whitespace",
        action="store_true",
        help="runs of spaces/tabs -> one space, trim lines, at most one blank line in a row",
    )


def cleaning_rules(args):
    from gptlab.data.cleaning import CleaningRules

    return CleaningRules(
        strip_gutenberg=args.strip_gutenberg,
        normalize=args.normalize,
        drop_lines=args.drop_lines,
        lowercase=args.lowercase,
        keep_chars=args.keep_chars,
        collapse_whitespace=args.collapse_whitespace,
    )


def add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="turn text into a data directory of tokens",
        description="Turn text into a data directory of tokens.",
    )
    p.add_argument("sources", nargs="*", help="text files or folders (default: the bundled Shakespeare corpus)")
    p.add_argument("--out", required=True, type=Path, help="data directory to write")
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of the text held out for validation (default 0.1)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for picking validation documents")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data directory")
    p.add_argument("--workers", type=int, help="processes that encode (default: one per core this process may use)")
    p.add_argument("--shard-tokens", type=int, help="tokens per shard file (default 100,000,000)")
    p.add_argument(
        "--compare-png",
        type=Path,
        metavar="PATH",
        help="also draw vocabulary size and characters per token of every tokenizer on a sample of the text",
    )
    add_tokenizer_args(p, "char")
    add_source_args(p)
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> None:
    from gptlab.data.prepare import SHARD_TOKENS, prepare, prepare_summary

    meta = prepare(
        args.sources,
        args.out,
        args.tokenizer,
        args.val_fraction,
        args.seed,
        args.overwrite,
        tokenizer_options=tokenizer_options(args),
        cleaning=cleaning_rules(args),
        encoding_errors=args.encoding_errors,
        workers=args.workers,
        shard_tokens=SHARD_TOKENS if args.shard_tokens is None else args.shard_tokens,
        progress=True,
        compare_png=args.compare_png,
    )
    print(prepare_summary(args.out, meta))


def add_tokenize(sub) -> None:
    p = sub.add_parser(
        "tokenize",
        help="show how a text splits into tokens and ids",
        description="Show how a text splits into tokens and ids, offline. With --data: that data directory's "
        "tokenizer; else --tokenizer KIND (char/word/bpe are trained on SOURCES, default the bundled corpus; gpt2 "
        "reads --tokenizer-file).",
    )
    p.add_argument("text", help="the text to split")
    p.add_argument("--data", type=Path, help="a prepared data directory whose tokenizer to use")
    p.add_argument(
        "--sources", nargs="*", default=[], help="text to train char/word/bpe on (default: the bundled corpus)"
    )
    add_tokenizer_args(p, None, "bpe trained on SOURCES; gpt2 when --tokenizer-file is given")
    p.set_defaults(func=cmd_tokenize)


def cmd_tokenize(args) -> None:
    from gptlab.data.corpus import Corpus
    from gptlab.data.format import data_tokenizer
    from gptlab.data.prepare import survey
    from gptlab.tokenizers import pieces

    if args.data:
        tok = data_tokenizer(args.data)
    else:
        kind = args.tokenizer or ("gpt2" if args.tokenizer_file else "bpe")
        tok = survey(Corpus(args.sources), kind, tokenizer_options(args))["tokenizer"]
    ids = tok.encode(args.text)
    per_token = f", {len(args.text) / len(ids):.2f} characters/token" if ids else ""
    print(
        f"{tok.kind} tokenizer (vocab {tok.vocab_size:,}): {len(args.text)} characters -> {len(ids)} tokens{per_token}"
    )
    print(" ".join(repr(p) for p in pieces(tok, ids)))
    print(" ".join(str(i) for i in ids))


def add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on a data directory",
        description="Train a GPT. Config = preset, then --key value overrides (keys below). "
        "On N processes: torchrun --nproc-per-node N -m gptlab train ... (the same arguments).",
    )
    p.add_argument(
        "--data", type=Path, help="data directory from `gptlab prepare` (with --resume: only if the data moved)"
    )
    p.add_argument("--out", type=Path, help="run directory to write (checkpoints, metrics, samples, plots)")
    p.add_argument("--preset", help=f"named recipe: {', '.join(preset_names())}, or a .yaml file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue this run from its last checkpoint (train keys may be overridden)",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        metavar="CHECKPOINT",
        help="start a new run from these weights (fine-tuning); the model keys come from it",
    )
    add_config_overrides(p)
    p.set_defaults(func=cmd_train)


def add_config_overrides(p) -> None:
    """Every config key as a flag, --max-iters N for max_iters (--max_iters too); `config_overrides`
    collects what was given. Shared by the verbs that take a run's config (train, sweep)."""
    group = p.add_argument_group("config overrides (--key value; the keys of the config's model and train sections)")
    ranges = field_ranges()
    for key, (section, typ) in field_types().items():
        accepts = f": {ranges[key].describe()}" if key in ranges else ""
        group.add_argument(
            f"--{key.replace('_', '-')}",
            dest=f"override_{key}",
            metavar=typ.__name__.upper(),
            help=f"{section}.{key}{accepts}",
        )


def config_overrides(args) -> dict[str, str]:
    """{config key: value as typed} for the overrides given on the command line (add_config_overrides)."""
    return {k[len("override_") :]: v for k, v in vars(args).items() if k.startswith("override_") and v is not None}


def cmd_train(args) -> None:
    from gptlab.training.trainer import resume, train

    overrides = config_overrides(args)
    if args.resume:
        if args.out or args.preset or args.init_from or args.overwrite:
            raise GptlabError(
                "--resume continues a run as it was configured: drop --out, --preset, --init-from and --overwrite"
            )
        resume(args.resume, overrides, data_dir=args.data)
        return
    if args.data is None or args.out is None:
        raise GptlabError("train needs --data DIR and --out RUN_DIR (or --resume RUN_DIR)")
    if args.init_from:
        model_keys = sorted(k for k in overrides if field_types()[k][0] == "model" and k != "dropout")
        if model_keys:
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in model_keys)
            raise GptlabError(
                f"--init-from takes the model from the checkpoint; drop {flags} (only --dropout may change)"
            )
    cfg = build_config(args.preset, overrides)
    preset_file = (Path(args.preset),) if args.preset and Path(args.preset).is_file() else ()
    train(cfg, args.data, args.out, overwrite=args.overwrite, init_from=args.init_from, reads=preset_file)


def add_sampling_args(p) -> None:
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument(
        "--top-k", type=int, default=200, help="sample among the k most likely tokens (0 = all; default 200)"
    )
    p.add_argument(
        "--top-p", type=float, default=None, help="sample among the most likely tokens whose probability reaches p"
    )
    p.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="> 1 makes tokens already in the text less likely"
    )
    p.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="end the text where TEXT appears (repeatable)"
    )
    p.add_argument("--seed", type=int, default=None, help="fix the random seed for a reproducible sample")
    add_compute_args(p)


def add_compute_args(p) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    add_threads_arg(p)


def add_threads_arg(p) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch's CPU threads (default 0: OMP_NUM_THREADS if set, else the cores this process may use)",
    )


def load_text_generator(args, use_cache: bool = True):
    from gptlab.generation import load

    return load(
        args.checkpoint,
        args.device,
        use_cache=use_cache,
        threads=args.threads,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop=tuple(args.stop),
        seed=args.seed,
    )


def add_sample(sub) -> None:
    p = sub.add_parser(
        "sample", help="generate text from a trained model", description="Generate text from a checkpoint."
    )
    p.add_argument("checkpoint", type=Path, help="run directory (uses its best checkpoint) or checkpoint directory")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a new document)")
    p.add_argument("--num-samples", type=int, default=1, help="samples generated together as one batch")
    p.add_argument(
        "--truncate",
        action="store_true",
        help="a prompt longer than the model's context: keep its last block_size tokens (default: refuse it)",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the whole window at every step instead of keeping a KV cache (slower; for teaching and "
        "benchmarks)",
    )
    add_sampling_args(p)
    p.set_defaults(func=cmd_sample)


def cmd_sample(args) -> None:
    lm = load_text_generator(args, use_cache=not args.no_cache)
    if args.num_samples == 1:  # stream: text appears as it is generated
        pieces = lm.stream(args.prompt, truncate=args.truncate)  # checks the prompt before anything is printed
        print(args.prompt, end="", flush=True)
        for piece in pieces:
            print(piece, end="", flush=True)
        print()
        return
    for i, text in enumerate(lm.generate_batch(args.prompt, args.num_samples, truncate=args.truncate)):
        print(f"--- sample {i + 1}")
        print(args.prompt + text)


def add_chat(sub) -> None:
    p = sub.add_parser(
        "chat",
        help="talk to a trained model at a >: prompt",
        description="An interactive console: "
        "the model continues what you type, streaming; /help inside lists the commands.",
    )
    p.add_argument("checkpoint", type=Path, help="run directory (uses its best checkpoint) or checkpoint directory")
    add_sampling_args(p)
    p.set_defaults(func=cmd_chat)


def cmd_chat(args) -> None:
    from gptlab.generation.console import Console, enable_line_editing

    lm = load_text_generator(args)
    if sys.stdin.isatty():
        enable_line_editing()
    Console(lm).run()


def add_info(sub) -> None:
    p = sub.add_parser(
        "info",
        help="parameters, FLOPs per token and training memory of a model",
        description="Describe a model from its config alone: parameters by component, training FLOPs per token, "
        "and an estimate of the memory training it takes.",
    )
    p.add_argument(
        "source", help=f"preset ({', '.join(preset_names())}), .yaml/.json config, run or checkpoint directory"
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="batch size for the memory estimate (default: the config's)"
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="vocabulary size, for configs that take it from the data (default: 65, Tiny Shakespeare's characters)",
    )
    p.add_argument(
        "--parallel", choices=["ddp", "fsdp"], help="memory per device under DDP or FSDP (default: the config's)"
    )
    p.add_argument("--world-size", type=int, default=1, help="number of devices (processes) to train on")
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> None:
    from gptlab.checkpoint import load_config
    from gptlab.models.info import describe, format_info

    print(
        format_info(
            describe(load_config(args.source, args.vocab_size), args.batch_size, args.parallel, args.world_size)
        )
    )


def add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="loss, perplexity, bits per char/byte on the val split or held-out text",
        description="Evaluate a checkpoint on every token of its run's val split (or of --text files), in "
        "non-overlapping block_size windows. Prints loss, perplexity, bits per character and bits per byte "
        "with 95%% intervals (1.96 * std / sqrt(tokens) of the per-token losses).",
    )
    p.add_argument("checkpoint", type=Path, help="run directory (uses its best checkpoint) or checkpoint directory")
    p.add_argument(
        "--text", type=Path, nargs="+", metavar="FILE", help="held-out text files to evaluate instead of the val split"
    )
    p.add_argument(
        "--split", default="val", choices=("val", "train"), help="split of the run's data directory (default val)"
    )
    p.add_argument("--data", type=Path, help="data directory (default: the one the run was trained on)")
    p.add_argument("--max-tokens", type=int, help="evaluate only the first N tokens of the split")
    p.add_argument(
        "--encoding-errors",
        choices=["strict", "replace"],
        default="strict",
        help="--text files with invalid UTF-8: stop with the file and byte offset (strict), or replace with U+FFFD",
    )
    add_compute_args(p)
    p.set_defaults(func=cmd_eval)


def load_for_eval(args):
    from gptlab.checkpoint import load_checkpoint
    from gptlab.device import resolve_device, setup_device

    device = resolve_device(args.device)
    setup_device(device, threads=args.threads)
    return load_checkpoint(args.checkpoint, device)


def cmd_eval(args) -> None:
    from gptlab.data.sources import read_blocks, text_file
    from gptlab.evaluation.eval import evaluate_split, evaluate_text

    if args.max_tokens is not None and args.max_tokens < 2:
        raise GptlabError("--max-tokens must be at least 2")
    ckpt = load_for_eval(args)
    if args.text:
        for path in args.text:
            text = "".join(read_blocks(text_file(path), args.encoding_errors))  # a pipe, <(command), is read once
            print(evaluate_text(ckpt, text, str(path)).summary())
        return
    print(evaluate_split(ckpt, args.split, args.data, args.max_tokens).summary())
    if args.split == "val" and "val_loss" in ckpt.info:
        print(
            f"  (the trainer's estimate at step {ckpt.info.get('step')}: val loss {ckpt.info['val_loss']:.4f}, "
            f"from {ckpt.config.train.eval_iters} random batches)"
        )


def add_inspect(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="pictures of a trained model: attention, next token, embeddings, loss curves",
        description="Draw PNG pictures of a checkpoint into --out: attention, next-token, embeddings, loss, "
        "position-loss, residual.",
    )
    p.add_argument("checkpoint", type=Path, help="run directory (uses its best checkpoint) or checkpoint directory")
    p.add_argument("--out", required=True, type=Path, help="folder for the PNG files")
    p.add_argument(
        "--prompt", default="ROMEO:\nWhat light", help="text for the attention, next-token and residual pictures"
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=("attention", "next-token", "embeddings", "loss", "position-loss", "residual"),
        help="draw only these pictures (default: all)",
    )
    p.add_argument(
        "--compare", type=Path, nargs="+", default=[], metavar="RUN", help="more runs for the loss-curve plot"
    )
    p.add_argument("--layers", type=int, nargs="+", help="attention: only these layers (default: all)")
    p.add_argument("--top", type=int, default=20, help="next-token: how many candidates to show")
    p.add_argument("--temperature", type=float, nargs="+", default=[1.0], help="next-token: one or more temperatures")
    p.add_argument(
        "--split", default="val", choices=("val", "train"), help="position-loss: split of the run's data (default val)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=200_000, help="position-loss: first N tokens of the split (default 200000)"
    )
    add_compute_args(p)
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args) -> None:
    from gptlab.evaluation import inspect

    ckpt = load_for_eval(args)
    for path in inspect.draw(
        ckpt,
        args.out,
        args.only or inspect.PICTURES,
        prompt=args.prompt,
        layers=args.layers,
        top=args.top,
        temperatures=tuple(args.temperature),
        split=args.split,
        max_tokens=args.max_tokens,
        compare=args.compare,
    ):
        print(f"wrote {path}")


def add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write a Markdown report of a run",
        description="Write RUN/report.md: config, data, loss curves, metrics, throughput, samples.",
    )
    p.add_argument("run", type=Path, help="run directory written by `gptlab train`")
    p.add_argument("--out", type=Path, help="Markdown file to write (default RUN/report.md)")
    p.add_argument("--no-eval", action="store_true", help="skip evaluating the whole val split")
    add_threads_arg(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> None:
    from gptlab.device import set_threads
    from gptlab.evaluation.report import write_report

    set_threads(args.threads)
    print(f"wrote {write_report(args.run, args.out, evaluate=not args.no_eval)}")


def add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="train many runs over a search space (Optuna) and compare them",
        description="Train one run per trial under SWEEP/ (trial-NNNN, ordinary run directories), drawing each "
        "trial's settings from the --param space; the other settings come from the preset and --key value, as in "
        "`gptlab train` (--seed also seeds the search). Rerun the same command to go on after a stop; run it in "
        "several processes (or machines sharing --storage) to split the trials. Writes SWEEP/summary.md, "
        "summary.csv, params.png and curves.png, and prints the command that trains the best trial for longer. "
        "See docs/sweeps.md.",
    )
    p.add_argument("--data", required=True, type=Path, help="data directory from `gptlab prepare`")
    p.add_argument("--out", required=True, type=Path, help="sweep directory: the study, one run per trial, summary")
    p.add_argument("--preset", help=f"named recipe: {', '.join(preset_names())}, or a .yaml file")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=KIND:ARGS",
        help="a swept train key (repeatable): KEY=loguniform:LOW:HIGH, KEY=uniform:LOW:HIGH or KEY=choice:A,B,...",
    )
    p.add_argument("--trials", type=int, help="trials in the study (grid: default and at most the grid's size)")
    p.add_argument(
        "--search",
        choices=("tpe", "random", "grid"),
        default="tpe",
        help="how trials draw their settings: tpe (Optuna's default model), random, or every point of a choice grid",
    )
    p.add_argument(
        "--prune",
        action="store_true",
        help="stop a trial whose val loss is worse than 3/4 of the completed trials' at the same step",
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="database of the study (default sqlite:///SWEEP/study.db); processes sharing it split the trials",
    )
    p.add_argument("--study-name", help="the study's name in --storage (default: the --out directory's name)")
    add_config_overrides(p)
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> None:
    from gptlab.sweeps.space import parse_space
    from gptlab.sweeps.study import Sweep

    fixed = config_overrides(args)
    sweep = Sweep(
        args.out,
        args.data,
        parse_space(args.param, fixed),
        preset=args.preset,
        fixed=fixed,
        search=args.search,
        trials=args.trials,
        prune=args.prune,
        storage=args.storage,
        study_name=args.study_name,
    )
    print(sweep.run().text())


def add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="runs side by side: best val loss, steps, time and the settings that differ",
        description="Print one Markdown table of runs sorted by best val loss (the table of `gptlab sweep`), "
        "with a column for each setting that differs among them.",
    )
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run directories written by `gptlab train`")
    p.add_argument("--csv", type=Path, metavar="PATH", help="also write the table as CSV, full precision")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> None:
    from gptlab.sweeps.summary import compare_runs

    print(compare_runs(args.runs, args.csv))


def add_import_gpt2(sub) -> None:
    p = sub.add_parser(
        "import-gpt2",
        help="turn a local Hugging Face GPT-2 directory into a gptlab checkpoint",
        description="Turn a local Hugging Face GPT-2 directory (config.json + model.safetensors + tokenizer files) "
        "into a gptlab checkpoint. Nothing is downloaded: fetch the directory with your usual tools.",
    )
    p.add_argument(
        "hf_dir",
        type=Path,
        help="directory with config.json, model.safetensors and vocab.json + merges.txt or tokenizer.json",
    )
    p.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    p.add_argument(
        "--tokenizer-file",
        type=Path,
        help="GPT-2 tokenizer file to use instead of the directory's (e.g. gpt2.tiktoken)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint in --out")
    p.set_defaults(func=cmd_import_gpt2)


def cmd_import_gpt2(args) -> None:
    from gptlab.interop.hf import import_gpt2

    out = import_gpt2(args.hf_dir, args.out, args.tokenizer_file, args.overwrite)
    print(f"wrote {out}: fine-tune with `gptlab train --init-from {out} ...` or try `gptlab sample {out}`")


def add_export_hf(sub) -> None:
    p = sub.add_parser(
        "export-hf",
        help="write a checkpoint as a Hugging Face GPT-2 directory",
        description="Write a checkpoint as a directory that transformers' AutoModelForCausalLM and AutoTokenizer load.",
    )
    p.add_argument("checkpoint", type=Path, help="run directory (uses its best checkpoint) or checkpoint directory")
    p.add_argument("out_dir", type=Path, help="directory to write (config.json, model.safetensors, tokenizer files)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT_DIR")
    p.set_defaults(func=cmd_export_hf)


def cmd_export_hf(args) -> None:
    from gptlab.interop.hf import export_hf

    out = export_hf(args.checkpoint, args.out_dir, args.overwrite)
    print(f"wrote {out}: load it with transformers' AutoModelForCausalLM.from_pretrained({str(out)!r})")


def add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve a model over HTTP with OpenAI's routes (/v1/completions, /v1/chat/completions, "
        "/v1/models, /health); concurrent requests are decoded together. docs/serving.md describes the API.",
    )
    p.add_argument("checkpoint", type=Path, help="run directory (uses its best checkpoint) or checkpoint directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("GPTLAB_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 (default: $GPTLAB_API_KEY, else none)",
    )
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (default 16)")
    p.add_argument("--max-queue", type=int, default=64, help="sequences that may wait beyond those; more get 429")
    add_compute_args(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> None:
    from gptlab.serving import serve

    serve(
        args.checkpoint, args.host, args.port, args.api_key, args.max_batch, args.max_queue, args.device, args.threads
    )


def build_parser() -> Parser:
    parser = Parser(prog="gptlab", description="Build, train, inspect and use GPT-style language models from scratch.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    add_prepare(sub)
    add_tokenize(sub)
    add_train(sub)
    add_sample(sub)
    add_chat(sub)
    add_info(sub)
    add_eval(sub)
    add_inspect(sub)
    add_report(sub)
    add_sweep(sub)
    add_compare(sub)
    add_import_gpt2(sub)
    add_export_hf(sub)
    add_serve(sub)
    return parser


def raise_terminated(signum, frame):
    raise Terminated()


def silence_stdout() -> None:
    """After the reader of a pipe left: send what is still buffered nowhere, so exiting raises nothing more."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (captured by a test)
        pass


def main(argv: list[str] | None = None) -> int:
    """Run one command. The error boundary: a GptlabError or an OS error (permissions, a full disk, a path
    that is a file or a folder where the other was expected, ...) is one line and exit 2; a closed pipe
    (`gptlab sample ... | head`) ends quietly; Ctrl-C and SIGTERM clean up and exit 130 / 143. --debug
    shows the traceback instead."""
    args = build_parser().parse_args(argv)
    # Under torchrun the launcher stops its processes with SIGTERM, and one blocked in a collective would
    # never get to raise it: there the default (end at once) stays, and training's own handler applies.
    alone = threading.current_thread() is threading.main_thread() and os.environ.get("WORLD_SIZE", "1") == "1"
    previous = signal.signal(signal.SIGTERM, raise_terminated) if alone else None
    try:
        args.func(args)
    except BrokenPipeError:
        silence_stdout()
        return 128 + signal.SIGPIPE
    except (GptlabError, OSError) as e:
        if args.debug:
            raise
        if isinstance(e, OSError):
            print(f"gptlab {args.command}: error: {os_error_message(e)}", file=sys.stderr)
            return 2
        if not e.silent:  # under torchrun, rank 0 prints an error that every rank met
            print(f"gptlab {args.command}: {'error: ' if e.is_error else ''}{e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"gptlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"gptlab {args.command}: stopped by SIGTERM", file=sys.stderr)
        return e.exit_code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0
