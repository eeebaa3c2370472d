"""Prepare throughput (MB/s) and peak memory on a generated text file, against a plain tiktoken loop.

    python -m benchmarks.prepare                      # 1 GB file under /tmp, one run of each, interleaved
    python -m benchmarks.prepare --size-mb 64 --repeats 3

Contenders, each a fresh process on the same file:
  prepare   `gptlab prepare FILE --tokenizer gpt2` (streaming survey + encode in two threads, shards, meta)
  tiktoken  the loop one would write by hand: read ~1 MB of whole lines, encode_ordinary, append uint16 ids
            to a file; one process.
CPU seconds (user + system, the process and its workers) tell what a run costs when, as on a
shared machine, other load takes the cores. Peak memory is the largest sum of resident memory (VmRSS)
over the process and all its children, sampled every 0.1 s from /proc, and, as a cross-check, the largest
single-process peak (VmHWM).
The text: lines of the bundled Shakespeare corpus in a seeded random order, repeated to size.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.common import interleaved, machine_line, markdown_table

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VOCAB = ROOT.parent / "shared" / "data" / "gpt2" / "gpt2.tiktoken"
READ_CHARS = 1 << 20


def generate_text(path: Path, size_mb: int, seed: int = 0) -> Path:
    """At least size_mb MiB of Shakespeare's lines in a seeded random order (kept for the next run)."""
    if path.is_file() and path.stat().st_size >= size_mb << 20:
        return path
    from gptlab.data.sources import bundled_paths

    lines = [line for p in bundled_paths() for line in p.read_text().splitlines(keepends=True)]
    rng = random.Random(seed)
    written = 0
    with open(path.with_suffix(".part"), "w") as f:
        while written < size_mb << 20:
            rng.shuffle(lines)  # one pass over the whole corpus (~5 MB) in a new order
            written += f.write("".join(lines))  # ASCII text: characters = bytes
    path.with_suffix(".part").rename(path)
    return path


def tree_memory(pid: int) -> tuple[int, int]:
    """(sum of VmRSS, largest VmHWM) over `pid` and all its descendants, in bytes.

    VmHWM is each process's own peak since it started its program. wait4's ru_maxrss is not: a
    child that subprocess starts with vfork inherits the parent's high-water mark, so it reported
    the benchmark process's own size for every contender."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    total, largest, todo = 0, 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                fields = dict(line.split(":", 1) for line in f)
            total += int(fields["VmRSS"].split()[0]) * 1024
            largest = max(largest, int(fields["VmHWM"].split()[0]) * 1024)
        except (OSError, KeyError, ValueError):
            pass  # exited meanwhile, or a kernel thread without memory fields
    return total, largest


def run_measured(cmd: list[str], record: dict) -> None:
    """Run cmd; record wall seconds, peak process-tree RSS and the largest single-process peak."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = largest = 0
    done = threading.Event()

    def sample():
        nonlocal peak, largest
        while not done.is_set():
            tree, hwm = tree_memory(proc.pid)
            peak, largest = max(peak, tree), max(largest, hwm)
            done.wait(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out = proc.stdout.read()
    done.set()
    sampler.join()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    record.setdefault("seconds", []).append(time.perf_counter() - t)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out}")
    record.setdefault("peak_tree_rss", []).append(peak)
    record.setdefault("max_process_rss", []).append(largest)
    record.setdefault("cpu_seconds", []).append(usage.ru_utime + usage.ru_stime)  # with its reaped workers
    record["output"] = out


def tiktoken_loop(text_path: str, vocab: str, out_path: str) -> None:
    """The single-process baseline: what one would write by hand with tiktoken."""
    import numpy as np

    from gptlab.tokenizers.gpt2 import GPT2Tokenizer

    enc = GPT2Tokenizer.from_file(vocab).encoding
    tokens = 0
    with open(text_path, encoding="utf-8") as f, open(out_path, "wb") as out:
        while chunk := f.read(READ_CHARS) + f.readline():
            ids = np.asarray(enc.encode_ordinary(chunk), dtype=np.uint16)
            ids.tofile(out)
            tokens += ids.size
    print(f"tokens {tokens}")


def run_benchmark(size_mb: int, repeats: int, scratch: Path, tokenizer_file: Path = DEFAULT_VOCAB) -> str:
    """Both contenders on one generated file, interleaved; returns the report (markdown)."""
    if not tokenizer_file.is_file():
        raise SystemExit(f"GPT-2 vocabulary not found at {tokenizer_file}; pass --tokenizer-file")
    scratch.mkdir(parents=True, exist_ok=True)
    text = generate_text(scratch / f"text-{size_mb}mb.txt", size_mb)
    mb = text.stat().st_size / 1e6
    records: dict[str, dict] = {"prepare": {}, "tiktoken": {}}
    py = sys.executable
    fns = {
        "prepare": lambda: run_measured(
            [
                py,
                "-m",
                "gptlab",
                "prepare",
                str(text),
                "--out",
                str(scratch / "data"),
                "--overwrite",
                "--tokenizer",
                "gpt2",
                "--tokenizer-file",
                str(tokenizer_file),
            ],
            records["prepare"],
        ),
        "tiktoken": lambda: run_measured(
            [
                py,
                "-m",
                "benchmarks.prepare",
                "--baseline",
                str(text),
                str(tokenizer_file),
                str(scratch / "baseline.bin"),
            ],
            records["tiktoken"],
        ),
    }
    load_before = os.getloadavg()
    timings = interleaved(fns, repeats=repeats, warmup=0)
    load_after = os.getloadavg()
    rows = []
    for name, timing in timings.items():
        r = records[name]
        rows.append(
            [
                name,
                str(timing),
                f"{mb / timing.median:.2f}",
                f"{statistics.median(r['cpu_seconds']):.1f}",
                f"{max(r['peak_tree_rss']) / 2**20:.0f}",
                f"{max(r['max_process_rss']) / 2**20:.0f}",
            ]
        )
    ratio = timings["tiktoken"].median / timings["prepare"].median
    return "\n".join(
        [
            f"machine: {machine_line()}",
            f"file: {mb:,.0f} MB ({text}); repeats {repeats}, interleaved; "
            f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (1-min)",
            markdown_table(
                [
                    "contender",
                    "wall (median ±spread)",
                    "MB/s",
                    "CPU s (median)",
                    "peak RSS, all processes (MiB)",
                    "peak RSS, largest process (MiB)",
                ],
                rows,
            ),
            f"prepare's throughput is {ratio:.2f}x the single-process tiktoken loop's",
            "prepare said: " + records["prepare"]["output"].strip().splitlines()[0],
            "tiktoken loop said: " + records["tiktoken"]["output"].strip().splitlines()[-1],
        ]
    )


def run(quick: bool) -> str:
    """The suite's entry (`python -m benchmarks prepare`): 64 MB, 3 interleaved runs of each; quick: 2 MB, 1 run.
    1 GB takes over 10 minutes here, more than the whole suite's budget: run it by hand (main)."""
    import tempfile

    size_mb, repeats = (2, 1) if quick else (64, 3)
    with tempfile.TemporaryDirectory(prefix="gptlab-bench-prepare-") as tmp:
        report = run_benchmark(size_mb, repeats, Path(tmp))
    blocks, table = [], []  # Markdown: a blank line between the report's lines, the table kept whole
    for line in report.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            blocks, table = blocks + ["\n".join(table)], []
        blocks.append(line)
    blocks += ["\n".join(table)] if table else []
    return f"## Prepare in the suite: {size_mb} MB, gptlab prepare vs a single-process tiktoken loop\n\n" + "\n\n".join(
        blocks
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/gptlab-bench-prepare"), help="scratch space (not the repo)")
    ap.add_argument("--tokenizer-file", type=Path, default=DEFAULT_VOCAB)
    ap.add_argument("--baseline", nargs=3, metavar=("TEXT", "VOCAB", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline:
        tiktoken_loop(*args.baseline)
    else:
        print(run_benchmark(args.size_mb, args.repeats, args.dir, args.tokenizer_file))


if __name__ == "__main__":
    main()
