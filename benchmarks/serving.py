"""Serving: `gptlab serve` against `transformers serve`, with and without continuous batching.

    PYTHONPATH=src:. HF_HUB_OFFLINE=1 nice -n 19 python -m benchmarks.serving [--rounds 2] [--quick]

One GPT-2-shaped model (6 layers, 6 heads, 384 wide, GPT-2's 50,257-token vocabulary, 1024
positions, random weights) is saved as a gptlab checkpoint and written as a Hugging Face directory
with `gptlab export-hf`; the three servers load the same weights from those. Each runs as its own
process on 127.0.0.1 (transformers: `transformers serve DIR --device cpu [--continuous-batching]`,
DIR itself as the model id, offline). The load is the official openai client, streaming
/v1/completions, 64 new tokens, greedy: at concurrency c, c client threads each send their requests
one after another (distinct short prompts). Measured per run: output tokens/s and requests/s over
the run's wall time, and time to first token (p50, p95) per request.

All three servers are started first and stay up; the runs go round-robin (for each round, for each
concurrency: gptlab, transformers, transformers with continuous batching), so load from other work
on the machine hits all alike, and the table gives each cell's median over the rounds. Run by hand,
outside the CPU suite (about 10 minutes on 2 cores): it needs ../shared/data/gpt2/gpt2.tiktoken.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai
import torch

from benchmarks.common import REPO_ROOT, machine_line, markdown_table

GPT2_VOCAB = REPO_ROOT.parent / "shared" / "data" / "gpt2" / "gpt2.tiktoken"
NEW_TOKENS = 64
CONCURRENCY = (1, 4, 16)
WORDS = "the king and queen of denmark speak with a ghost upon the castle walls at night while the guards".split()
# short name -> the server as its command line names it
SERVERS = {
    "gptlab": "gptlab serve",
    "transformers": "transformers serve",
    "transformers-cb": "transformers serve --continuous-batching",
}


def prompts(n: int) -> list[str]:
    """n distinct short English prompts (8-12 words)."""
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8 + i % 5)).capitalize() for i in range(n)]


def build_model(tmp: Path, shape: tuple[int, int, int]) -> tuple[Path, Path]:
    """A random GPT-2-shaped gptlab checkpoint with GPT-2's tokenizer, and its export-hf directory."""
    from gptlab.checkpoint import save_checkpoint
    from gptlab.config import ModelConfig, RunConfig
    from gptlab.data.format import tokenizer_record
    from gptlab.interop.hf import export_hf
    from gptlab.models import GPT
    from gptlab.tokenizers.gpt2 import GPT2Tokenizer

    if not GPT2_VOCAB.is_file():
        raise SystemExit(f"benchmark data missing: {GPT2_VOCAB} (GPT-2's vocabulary, beside the repository root)")
    tokenizer = GPT2Tokenizer.train([], tokenizer_file=GPT2_VOCAB)
    n_layer, n_head, n_embd = shape
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size, block_size=1024, n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=0.0
    )
    torch.manual_seed(0)
    model = GPT(cfg)
    info = {
        "tokenizer": tokenizer_record(tokenizer),
        "step": 0,
    }
    tokenizer_path = tokenizer.save(tmp)
    ckpt = save_checkpoint(tmp / "checkpoint", model, RunConfig(model=cfg), info, files=[tokenizer_path])
    return ckpt, export_hf(ckpt, tmp / "hf")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Contender:
    """One server process and the model id its requests name."""

    def __init__(self, name: str, ckpt: Path, hf_dir: Path, log_dir: Path, threads: int | None = None):
        self.name, self.port = name, free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        if threads:  # both servers' torch reads it at start
            env["OMP_NUM_THREADS"] = str(threads)
        bin_dir = Path(sys.executable).parent
        if name == "gptlab":
            command = [str(bin_dir / "gptlab"), "serve", str(ckpt), "--port", str(self.port), "--device", "cpu"]
            self.model = "checkpoint"
        else:
            command = [str(bin_dir / "transformers"), "serve", str(hf_dir), "--device", "cpu", "--port", str(self.port)]
            command += ["--host", "127.0.0.1"] + (["--continuous-batching"] if name == "transformers-cb" else [])
            self.model = str(hf_dir)
        self.log = open(log_dir / f"{name}.log", "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", max_retries=0)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.process.returncode}; see {self.log.name}")
            try:
                self.request("Hello", 4)
                return
            except openai.APIConnectionError:
                time.sleep(1)
        raise SystemExit(f"{self.name} did not answer within {timeout:.0f} s; see {self.log.name}")

    def request(self, prompt: str, max_tokens: int) -> tuple[float | None, int]:
        """(seconds to the first token, output tokens) of one streamed completion."""
        start = time.perf_counter()
        stream = self.client.completions.create(
            model=self.model,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        first, tokens, pieces = None, None, 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                pieces += 1
                if first is None:
                    first = time.perf_counter() - start
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return first, tokens if tokens is not None else pieces

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def load_run(contender: Contender, concurrency: int, per_client: int, texts: list[str]) -> dict[str, float]:
    """concurrency clients, each sending per_client requests back to back."""
    ttft: list[float] = []
    tokens = [0]
    errors: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for j in range(per_client):
            try:
                first, n = contender.request(texts[(k * per_client + j) % len(texts)], NEW_TOKENS)
            except openai.OpenAIError as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                tokens[0] += n
                if first is not None:
                    ttft.append(first)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{contender.name} at concurrency {concurrency}: {len(errors)} failed, e.g. {errors[0]}")
    requests = concurrency * per_client
    ttft.sort()
    return {
        "tok_s": tokens[0] / wall,
        "req_s": requests / wall,
        "ttft_p50": statistics.median(ttft),
        "ttft_p95": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))],
        "tokens": tokens[0] / requests,
    }


def run(quick: bool, rounds: int = 2, servers: tuple[str, ...] = tuple(SERVERS), threads: int | None = None) -> str:
    shape = (2, 2, 64) if quick else (6, 6, 384)
    per_client = {1: 2, 4: 2, 16: 1} if quick else {1: 4, 4: 2, 16: 1}
    texts = prompts(64)
    with tempfile.TemporaryDirectory(prefix="gptlab-serving-bench-") as tmp:
        tmp = Path(tmp)
        print("serving: building and exporting the model ...", file=sys.stderr, flush=True)
        ckpt, hf_dir = build_model(tmp, shape)
        contenders = []
        try:
            for name in servers:
                contenders.append(Contender(name, ckpt, hf_dir, tmp, threads))
            for c in contenders:
                print(f"serving: waiting for {c.name} ...", file=sys.stderr, flush=True)
                c.wait_ready()
                for text in texts[:2]:  # warm up
                    c.request(text, NEW_TOKENS)
            results: dict[tuple[str, int], list[dict]] = {}
            loads = []
            for r in range(rounds):
                for concurrency in CONCURRENCY:
                    for c in contenders:
                        print(f"serving: round {r + 1}, {c.name}, concurrency {concurrency}", file=sys.stderr)
                        results.setdefault((c.name, concurrency), []).append(
                            load_run(c, concurrency, per_client[concurrency], texts)
                        )
                        loads.append(os.getloadavg()[0])
        finally:
            for c in contenders:
                c.stop()
    return report(results, servers, shape, per_client, rounds, loads, threads)


def report(results, servers, shape, per_client, rounds, loads, threads) -> str:
    def med(name, c, key):
        return statistics.median(r[key] for r in results[(name, c)])

    rows = []
    for c in CONCURRENCY:
        for name in servers:
            rows.append(
                [
                    c,
                    f"`{SERVERS[name]}`",
                    f"{med(name, c, 'tok_s'):,.0f}",
                    f"{med(name, c, 'req_s'):.2f}",
                    f"{1000 * med(name, c, 'ttft_p50'):,.0f}",
                    f"{1000 * med(name, c, 'ttft_p95'):,.0f}",
                    f"{med(name, c, 'tokens'):.0f}",
                ]
            )
    header = ["concurrency", "server", "output tok/s", "requests/s", "TTFT p50 (ms)", "TTFT p95 (ms)", "tokens/request"]
    table = markdown_table(header, rows)
    peer = "transformers-cb"
    ratios = "not measured (both servers are needed)"
    if {"gptlab", peer} <= set(servers):
        ratios = ", ".join(f"c={c}: **{med('gptlab', c, 'tok_s') / med(peer, c, 'tok_s'):.2f}x**" for c in CONCURRENCY)
    return f"""## Serving: `gptlab serve` vs `transformers serve`

{shape[0]} layers, {shape[1]} heads, {shape[2]} wide, 50,257-token vocabulary, random weights (one gptlab
checkpoint, exported with `export-hf` for transformers), float32 on the CPU, torch threads: {
        f"{threads} for every server (OMP_NUM_THREADS)" if threads else "each server's default (the cores)"
    }. Streaming `/v1/completions`
through the openai client, {NEW_TOKENS} new tokens, greedy; at concurrency c, c client threads each send
{per_client[1]}, {per_client[4]}, {per_client[16]} requests (c = 1, 4, 16) back to back. Medians over {rounds}
rounds, servers interleaved in each round; the client threads share the machine with the server.

{table}

gptlab output tok/s over `transformers serve --continuous-batching`: {ratios}.
Load average during the runs: {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} cores.
"""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and runs: checks the code paths")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all runs (default 2)")
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=SERVERS,
        default=list(SERVERS),
        metavar="NAME",
        help=f"among {', '.join(SERVERS)}",
    )
    parser.add_argument("--threads", type=int, help="torch threads of every server (default: each one's own)")
    args = parser.parse_args()
    start = time.perf_counter()
    print(run(args.quick, args.rounds, tuple(args.servers), args.threads))
    command = "python -m benchmarks.serving" + "".join(f" {a}" for a in sys.argv[1:])
    print(f"_Command: `{command}` ({time.perf_counter() - start:.0f} s). Machine: {machine_line()}._")


if __name__ == "__main__":
    main()
