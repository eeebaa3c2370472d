"""Generation speed: gptlab with and without its KV cache, and against transformers' generate.

    PYTHONPATH=src:. HF_HUB_OFFLINE=1 python -m benchmarks.generation [--quick] [--threads N]

1. Cache vs recomputation: greedy decoding of 256 and 1024 new tokens after a 16-token prompt, on a
   small char model (2 layers, 2 heads, 64 wide, 65-char vocabulary) with block_size 1040, so the
   whole text fits the window and both paths compute the same thing. Without the cache every step
   is a full forward pass over the text so far: its cost grows with the square of the length, which
   is why this table uses a small model (at GPT-2 shapes one recomputed 1024-token run takes many
   minutes on 2 cores; the cache's advantage only grows with the model).
2. gptlab vs transformers: a random GPT2LMHeadModel (6 layers, 6 heads, 384 wide, GPT-2's 50,257
   vocabulary, 1040 positions) and a gptlab GPT holding a copy of its weights; greedy, KV cache on
   both sides, the same prompt, the same number of new tokens. The copy is done here in a few lines
   (transformers' Conv1D stores weights transposed against nn.Linear); gptlab's own GPT-2 converter
   lives in gptlab.interop. The logits of the two models are checked equal before timing.

Contenders are timed in alternation (common.interleaved); the table gives the median and spread.
`run(quick)` is the benchmark suite's entry point (python -m benchmarks generation).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from benchmarks.common import interleaved, machine_line, markdown_table
from gptlab.config import ModelConfig
from gptlab.generation.generate import generate
from gptlab.models import GPT

PROMPT_LEN = 16


def gptlab_from_transformers(hf) -> GPT:
    """A gptlab GPT with the weights of a transformers GPT2LMHeadModel (same names, Conv1D transposed)."""
    c = hf.config
    cfg = ModelConfig(
        vocab_size=c.vocab_size,
        block_size=c.n_positions,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        dropout=0.0,
        bias=True,
    )
    model = GPT(cfg)
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    state = {k: v.t() if k.endswith(conv1d) else v for k, v in hf.state_dict().items() if k in model.state_dict()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def random_transformers_gpt2(n_layer: int, n_head: int, n_embd: int, n_positions: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=50257,
        n_positions=n_positions,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    hf = GPT2LMHeadModel(cfg).eval()
    hf.generation_config.eos_token_id = None  # never stop early: every contender makes exactly n tokens
    hf.generation_config.pad_token_id = 0
    return hf


def tokens_per_second(n: int, timing) -> str:
    return f"{n / timing.median:,.0f}"


def cache_vs_recompute(lengths: list[int], repeats: int, width: tuple[int, int, int]) -> str:
    n_layer, n_head, n_embd = width
    torch.manual_seed(0)
    model = GPT(
        ModelConfig(vocab_size=65, block_size=PROMPT_LEN + max(lengths), n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    ).eval()
    prompt = torch.randint(0, 65, (PROMPT_LEN,)).tolist()
    rows = []
    for use_cache in (True, False):  # warm up both paths on a short run; a long one would cost minutes
        generate(model, prompt, 16, temperature=0, use_cache=use_cache)
    for n in lengths:  # tests/test_generation.py proves both paths give the same tokens and logits
        print(f"generation: cache vs recompute, {n} tokens ...", file=sys.stderr, flush=True)
        t = interleaved(
            {
                "cache": lambda: generate(model, prompt, n, temperature=0, use_cache=True),
                "recompute": lambda: generate(model, prompt, n, temperature=0, use_cache=False),
            },
            repeats=repeats,
            warmup=0,
        )
        rows.append(
            [
                n,
                f"{tokens_per_second(n, t['cache'])} ({t['cache']})",
                f"{tokens_per_second(n, t['recompute'])} ({t['recompute']})",
                f"**{t['recompute'].median / t['cache'].median:.1f}x**",
            ]
        )
    return markdown_table(
        ["new tokens", "KV cache: tokens/s (time)", "recompute: tokens/s (time)", "cache speed-up"], rows
    )


def versus_transformers(lengths: list[int], repeats: int, width: tuple[int, int, int]) -> tuple[str, str]:
    n_layer, n_head, n_embd = width
    hf = random_transformers_gpt2(n_layer, n_head, n_embd, PROMPT_LEN + max(lengths))
    ours = gptlab_from_transformers(hf)
    prompt = torch.randint(0, 50257, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = (ours(prompt)[0] - hf(prompt).logits).abs().max().item()
    assert diff < 1e-4, f"the copied weights do not give transformers' logits (max diff {diff})"

    def hf_generate(n):
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False)
        return out[0, PROMPT_LEN:].tolist()

    rows, agree = [], []
    for n in lengths:
        print(f"generation: gptlab vs transformers, {n} tokens ...", file=sys.stderr, flush=True)
        out: dict[str, list[int]] = {}  # each contender's last tokens, compared after timing
        t = interleaved(
            {
                "gptlab": lambda: out.__setitem__("gptlab", generate(ours, prompt[0].tolist(), n, temperature=0)[0]),
                "transformers": lambda: out.__setitem__("transformers", hf_generate(n)),
            },
            repeats=repeats,
            warmup=1,
        )
        a, b = out["gptlab"], out["transformers"]
        assert len(a) == len(b) == n
        agree.append(f"{next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), n)} of {n}")
        rows.append(
            [
                n,
                f"{tokens_per_second(n, t['gptlab'])} ({t['gptlab']})",
                f"{tokens_per_second(n, t['transformers'])} ({t['transformers']})",
                f"**{t['transformers'].median / t['gptlab'].median:.2f}**",
            ]
        )
    table = markdown_table(
        [
            "new tokens",
            "gptlab, KV cache: tokens/s (time)",
            "transformers generate: tokens/s (time)",
            "gptlab / transformers (tokens/s)",
        ],
        rows,
    )
    note = (
        f"Logits of the two models on the prompt differ by at most {diff:.1e}; greedy tokens agree "
        f"for the first {', '.join(agree)} (random weights give near-ties, where float rounding may pick another "
        "token). "
        f"transformers attention: `{hf.config._attn_implementation}`."
    )
    return table, note


def run(quick: bool) -> str:
    lengths = [16, 32] if quick else [256, 1024]
    repeats = 1 if quick else 3
    small, gpt2_like = ((2, 2, 32), (2, 2, 64)) if quick else ((2, 2, 64), (6, 6, 384))
    recompute = cache_vs_recompute(lengths, 2 if not quick else 1, small)
    versus, note = versus_transformers(lengths, repeats, gpt2_like)
    shape = f"{gpt2_like[0]} layers, {gpt2_like[1]} heads, {gpt2_like[2]} wide"
    return f"""## Generation

Greedy decoding after a {PROMPT_LEN}-token prompt, batch 1, float32, {torch.get_num_threads()} torch thread(s).
Times are per whole generation (median ±spread over the repeats, contenders interleaved).

### KV cache vs recomputation ({small[0]} layers, {small[1]} heads, {small[2]} wide, 65-token vocabulary)

{recompute}

### gptlab vs transformers `generate` ({shape}, 50,257-token vocabulary, same weights)

{versus}

{note}
"""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generation", description="generation tokens/s")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the code paths, numbers meaningless")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # gptlab's setup_device keeps it (device.set_threads)
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(run(args.quick))
    print(f"_Machine: {machine_line()}._")


if __name__ == "__main__":
    main()
