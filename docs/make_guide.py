"""Regenerate the pictures and numbers in docs/guide.md from a real run: `make guide`.

    python docs/make_guide.py [--iters N] [--work build/guide]

Prepares the bundled Shakespeare with the char tokenizer, trains the guide's GPT (preset
shakespeare-char-cpu, about 2 minutes on a laptop CPU) and the bigram baseline, evaluates both,
draws docs/images/*.png with gptlab.evaluation.inspect, and rewrites every generated block of
docs/guide.md (the text between `<!-- guide:NAME -->` and `<!-- /guide:NAME -->`).
Everything is seeded, so a second run on the same machine and torch gives the same numbers.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import torch

from gptlab.checkpoint import load_checkpoint
from gptlab.config import build_config, preset_names
from gptlab.data.format import read_meta
from gptlab.data.prepare import prepare
from gptlab.device import setup_device
from gptlab.evaluation import inspect
from gptlab.evaluation.eval import evaluate_ids, split_ids
from gptlab.evaluation.report import throughput
from gptlab.generation.generate import generate
from gptlab.training.metrics import read_metrics
from gptlab.training.trainer import train

DOCS = Path(__file__).resolve().parent
GUIDE = DOCS / "guide.md"
IMAGES = DOCS / "images"
PROMPT = "ROMEO:\nO, she doth teach"
PRESET = "shakespeare-char-cpu"


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- guide:{name} -->\n).*?(<!-- /guide:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{GUIDE} has no block <!-- guide:{name} --> ... <!-- /guide:{name} -->")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def table(rows, header) -> str:
    return "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    )


def train_run(name: str, preset: str, overrides: dict, data: Path, work: Path, reuse: bool) -> Path:
    """Train a run into work/name (or, with reuse, keep the one there)."""
    if not (reuse and (work / name / "best").is_dir()):
        train(build_config(preset, {"device": "cpu", **overrides}), data, work / name, overwrite=True, progress=False)
    return work / name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--iters",
        type=int,
        default=1000,
        help="training iterations of the guide's GPT (the preset's 2000 halved: about a minute on a laptop CPU)",
    )
    parser.add_argument("--work", type=Path, default=Path("build/guide"), help="where data and runs go (not committed)")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the runs already in --work (to redraw after editing the prose)"
    )
    args = parser.parse_args()
    setup_device(torch.device("cpu"))
    work, data = args.work, args.work / "data"
    blocks: dict[str, str] = {}

    meta = prepare([], data, "char", overwrite=True) if not (args.reuse and data.is_dir()) else read_meta(data)
    s = meta["sizes"]
    gpt_dir = train_run("gpt", PRESET, {"max_iters": args.iters}, data, work, args.reuse)
    runs = {"GPT": gpt_dir}
    if "bigram" in preset_names():  # the baseline: next char from the current char alone
        runs["bigram"] = train_run("bigram", "bigram", {}, data, work, args.reuse)
    gpt = load_checkpoint(gpt_dir)
    tok = gpt.tokenizer

    # text -> tokens
    ids = tok.encode(PROMPT)
    blocks["data"] = (
        f"`gptlab prepare` on the bundled corpus: {len(meta['documents']['train'])} plays and poems for training "
        f"({s['train_chars']:,} characters), {len(meta['documents']['val'])} held out for validation "
        f"({s['val_chars']:,} characters), split by whole document. Vocabulary: {tok.vocab_size} tokens "
        f"({tok.vocab_size - 1} distinct characters and `<|endoftext|>` = id {tok.eot_id})."
    )
    blocks["tokens"] = (
        "```text\n"
        + "\n".join(f"{inspect.token_label(gpt, i)!s:>4} -> {i}" for i in ids[:12])
        + f"\n ... ({len(ids)} tokens for {len(PROMPT)} characters)\n```"
    )

    cfg = gpt.config
    speed = throughput(read_metrics(gpt_dir), cfg.to_dict())
    blocks["model"] = (
        f"The guide's model: preset `{PRESET}` - {cfg.model.n_layer} layers, {cfg.model.n_head} heads, "
        f"n_embd {cfg.model.n_embd} (d_head = {cfg.model.n_embd // cfg.model.n_head}), block_size "
        f"{cfg.model.block_size}, "
        f"{gpt.model.num_params():,} parameters without the position table; trained {cfg.train.max_iters} steps of "
        f"{cfg.train.batch_size} x {cfg.model.block_size} tokens in {speed['seconds']:.0f} s of training "
        f"({speed['median_tokens_per_s']:,.0f} tokens/s, evaluation excluded) on this machine's CPU (torch threads: "
        f"{torch.get_num_threads()})."
    )

    # pictures
    inspect.plot_embeddings(gpt, IMAGES / "embeddings.png")
    inspect.plot_attention(gpt, PROMPT, IMAGES / "attention.png")
    inspect.plot_residual_stream(gpt, PROMPT, IMAGES / "residual_stream.png")
    inspect.plot_next_token(gpt, PROMPT, IMAGES / "next_token.png", top=15, temperatures=(1.0, 0.5))
    inspect.plot_loss_curves(list(runs.values()), IMAGES / "loss_curves.png", names=list(runs))

    # cross-entropy: the whole val split, per token and per position
    val_ids, val_name, val_size = split_ids(gpt, "val")
    rows = []
    for name, run in runs.items():
        ckpt = gpt if name == "GPT" else load_checkpoint(run)
        result, losses, positions = evaluate_ids(ckpt, val_ids, val_name, val_size)
        if name == "GPT":
            gpt_result = result
            inspect.plot_position_loss(
                losses,
                positions,
                cfg.model.block_size,
                IMAGES / "position_loss.png",
                "GPT: loss by position on the val split",
            )
            by_position, _ = inspect.position_loss(losses, positions, cfg.model.block_size)
            half = cfg.model.block_size // 2
            blocks["position"] = (
                f"The GPT's loss is {by_position[0]:.3f} nats/token at position 0 (one character of context), "
                f"{by_position[1:8].mean():.3f} over positions 1-7 and {by_position[half:].mean():.3f} over positions "
                f"{half}-{cfg.model.block_size - 1}."
            )
        rows.append(
            (
                name,
                f"{ckpt.model.num_params():,}" if hasattr(ckpt.model, "num_params") else "",
                f"{result.loss:.4f} ± {result.loss_ci:.4f}",
                f"{result.perplexity:.2f}",
                f"{result.bits_per_char:.3f}",
                f"{result.bits_per_byte:.3f} ± {result.per_byte_ci():.3f}",
            )
        )
    blocks["eval"] = (
        f"The whole val split ({gpt_result.tokens:,} tokens, {gpt_result.bytes:,} bytes), best checkpoint of each run, "
        "`gptlab eval` (± = 95% interval, 1.96 x std / sqrt(tokens)):\n\n"
        + table(rows, ("model", "parameters", "loss (nats/token)", "perplexity", "bits/char", "bits/byte"))
        + f"\n\nA model that knows nothing scores ln({tok.vocab_size}) = {math.log(tok.vocab_size):.3f} nats/token."
    )
    if "bigram" not in runs:
        blocks["eval"] += "\n\n(The bigram baseline is not in this version of gptlab: no `bigram` preset.)"

    # sampling
    probs = inspect.next_token_distribution(gpt, PROMPT)
    top = probs.topk(3)
    blocks["next"] = (
        "After the prompt the three most likely next characters are "
        + ", ".join(
            f"`{inspect.token_label(gpt, int(i))}` ({p:.0%})" for p, i in zip(top.values.tolist(), top.indices.tolist())
        )
        + "."
    )
    samples = []
    for temperature in (0.5, 1.0):
        gen = torch.Generator().manual_seed(1)
        out = generate(gpt.model, [tok.eot_id] + ids, 200, temperature, None, 1, gen)[0]
        samples.append(f"temperature {temperature}:\n\n```text\n{PROMPT}{tok.decode(out)}\n```")
    blocks["samples"] = "\n\n".join(samples)

    text = GUIDE.read_text()
    for name, body in blocks.items():
        text = replace_block(text, name, body)
    GUIDE.write_text(text)
    print(f"wrote {GUIDE} and {len(list(IMAGES.glob('*.png')))} pictures in {IMAGES}")


if __name__ == "__main__":
    sys.exit(main())
