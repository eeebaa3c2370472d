"""`gptlab report`: one Markdown page about a run: config, data, loss curves, metrics, samples, speed."""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from gptlab.atomic import write_text_atomic
from gptlab.checkpoint import RunDir, find_data_dir, load_checkpoint
from gptlab.data.format import read_meta
from gptlab.errors import GptlabError
from gptlab.evaluation.eval import evaluate_split
from gptlab.outputs import check_output_file
from gptlab.training.metrics import plot_loss, read_metrics


def markdown_table(rows: list[tuple], header: tuple) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def throughput(rows: list[dict], cfg: dict) -> dict | None:
    """Training speed from metrics.jsonl: each train row holds tokens/s over the steps since the last one."""
    train_rows = [r for r in rows if r["kind"] == "train"]
    if not train_rows:
        return None
    tokens_per_step = cfg["train"]["batch_size"] * cfg["train"]["grad_accum"] * cfg["model"]["block_size"]
    steps = [r["step"] - prev for r, prev in zip(train_rows, [0] + [r["step"] for r in train_rows])]
    speeds = [r["tokens_per_s"] for r in train_rows]
    later = speeds[1:] or speeds  # the first interval includes warm-up
    return {
        "steps": train_rows[-1]["step"],
        "tokens": train_rows[-1]["step"] * tokens_per_step,
        "seconds": sum(n * tokens_per_step / s for n, s in zip(steps, speeds)),
        "median_tokens_per_s": statistics.median(later),
        "min_tokens_per_s": min(later),
        "max_tokens_per_s": max(later),
    }


def write_report(
    run_dir: Path, out: Path | None = None, samples: int = 2, sample_tokens: int = 300, evaluate: bool = True
) -> Path:
    """Write RUN/report.md (or `out`) and the loss picture it shows; returns the page's path."""
    from gptlab.generation.generate import generate

    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    if not run.metrics.is_file():
        raise GptlabError(
            f"{run_dir} is not a run directory (no {run.metrics.name}); point at a directory written by `gptlab train`"
        )
    run_info = run.read_record()
    cfg = run_info["run"]
    out = Path(out) if out else run.report
    loss_png = out.with_name(out.stem + "_loss.png")
    for path in (out, loss_png):  # checked before any work; a missing folder is created at the end
        check_output_file(path, inputs=[run.config, run.metrics, run.samples, run.loss_plot])
    rows = read_metrics(run_dir)
    evals = [r for r in rows if r["kind"] == "eval"]
    ckpt = load_checkpoint(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_loss(run_dir, loss_png)

    parts = [f"# Run report: {run_dir.name}", ""]
    parts += ["## Model and training", ""]
    parts.append(
        f"{ckpt.model.num_params():,} parameters (without position embeddings), "
        f"checkpoint `{ckpt.dir.name}` from step {ckpt.info.get('step', '?')}."
    )
    parts += [
        "",
        markdown_table(
            [(f"{section}.{k}", v) for section in ("model", "train") for k, v in cfg[section].items()], ("key", "value")
        ),
        "",
    ]

    parts += ["## Data", ""]
    recorded = {"dir": run_info.get("data_dir"), "from_run": run_info.get("data_dir_from_run")}
    try:
        data_dir = find_data_dir(recorded, [run_dir], run.config)
        meta = read_meta(data_dir)
    except GptlabError:
        data_dir, meta = Path(recorded["dir"] or ""), None
    if meta is None:
        parts.append(f"The data directory `{data_dir}` recorded in config.json is no longer there.")
    else:
        s, tok = meta["sizes"], meta["tokenizer"]
        parts.append(
            markdown_table(
                [
                    ("directory", f"`{data_dir}`"),
                    ("sources", ", ".join(meta["sources"])),
                    ("tokenizer", f"{tok['kind']}, vocabulary {tok['vocab_size']:,}"),
                    ("split", f"by {meta['split']['method']}, val fraction {meta['split']['val_fraction']}"),
                    (
                        "train",
                        f"{s['train_tokens']:,} tokens, {s['train_chars']:,} characters, {s['train_documents']} "
                        "documents",
                    ),
                    (
                        "val",
                        f"{s['val_tokens']:,} tokens, {s['val_chars']:,} characters, {s['val_documents']} documents",
                    ),
                    ("content sha256", meta["content_sha256"][:16] + "…"),
                ],
                ("", ""),
            )
        )
        if (ckpt.info.get("data") or {}).get("content_sha256") not in (None, meta["content_sha256"]):
            parts += [
                "",
                "**The data directory was prepared again after training: its text differs from what the model saw.**",
            ]
    parts.append("")

    parts += ["## Loss", "", f"![loss curves]({loss_png.name})", ""]
    metric_rows = []
    if evals:
        last = evals[-1]
        best = min(evals, key=lambda r: r["val_loss"])
        metric_rows += [
            (f"final estimate (step {last['step']})", f"{last['train_loss']:.4f}", f"{last['val_loss']:.4f}"),
            (f"best val estimate (step {best['step']})", f"{best['train_loss']:.4f}", f"{best['val_loss']:.4f}"),
        ]
    parts.append(markdown_table(metric_rows, ("", "train loss", "val loss")))
    parts += [
        "",
        f"Estimates: mean over {cfg['train']['eval_iters']} random batches of "
        f"{cfg['train']['batch_size']} × {cfg['model']['block_size']} tokens per split (`estimate_loss`).",
        "",
    ]
    if evaluate and meta is not None:
        result = evaluate_split(ckpt, "val", data_dir)
        lo, hi = result.perplexity_interval
        parts.append(f"Whole val split, best checkpoint (`gptlab eval`), 95% intervals from {result.tokens:,} tokens:")
        parts += [
            "",
            markdown_table(
                [
                    ("loss (nats/token)", f"{result.loss:.4f} ± {result.loss_ci:.4f}"),
                    ("perplexity", f"{result.perplexity:.3f} [{lo:.3f}, {hi:.3f}]"),
                    ("bits per character", f"{result.bits_per_char:.4f} ± {result.per_char_ci():.4f}"),
                    ("bits per byte", f"{result.bits_per_byte:.4f} ± {result.per_byte_ci():.4f}"),
                ],
                ("metric", "value"),
            ),
            "",
        ]

    parts += ["## Throughput", ""]
    speed = throughput(rows, cfg)
    if speed:
        parts.append(
            markdown_table(
                [
                    ("steps", f"{speed['steps']:,}"),
                    ("tokens trained on", f"{speed['tokens']:,}"),
                    ("training time (evaluation excluded)", f"{speed['seconds']:,.1f} s"),
                    ("tokens/s (median of logged intervals)", f"{speed['median_tokens_per_s']:,.0f}"),
                    ("tokens/s (min – max)", f"{speed['min_tokens_per_s']:,.0f} – {speed['max_tokens_per_s']:,.0f}"),
                    ("device", cfg["train"]["device"]),
                ],
                ("", ""),
            )
        )
    parts.append("")

    parts += [
        "## Samples",
        "",
        f"{samples} samples of {sample_tokens} tokens from the start of a document "
        "(temperature 0.8, top-k 200, seed 0):",
        "",
    ]
    gen = torch.Generator(device=next(ckpt.model.parameters()).device).manual_seed(0)
    for ids in generate(ckpt.model, [ckpt.tokenizer.eot_id], sample_tokens, 0.8, 200, samples, gen):
        parts += ["```text", ckpt.tokenizer.decode(ids).replace("```", "'''"), "```", ""]

    write_text_atomic(out, "\n".join(parts))
    return out
