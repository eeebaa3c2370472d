"""What a model costs before you train it: parameters by component, FLOPs per token, training memory
per device (one device, or N under DDP or FSDP).

All of it is computed from the config alone: the model is built on the `meta` device, which
has shapes but no storage, so even gpt2-xl is described in milliseconds without allocating it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from gptlab.config import ModelConfig, RunConfig
from gptlab.errors import GptlabError
from gptlab.models import build_model
from gptlab.models.gpt import mlp_hidden

BYTES_PER_FLOAT = 4  # float32 weights, gradients and optimizer state: how gptlab trains on CPU
# per generated token of each sample: its int64 slot in the token tensor, the streaming decoder's Python
# list entry and int object, and the text itself
BYTES_PER_GENERATED_TOKEN = 64
# `gptlab info` on a config that leaves the vocabulary to the data assumes Tiny Shakespeare's characters
ASSUMED_VOCAB = 65


def build_on_meta(cfg: ModelConfig) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(cfg)


def component(name: str) -> str:
    """The part of the model a parameter belongs to, from its (GPT-2) name."""
    for part, label in (
        ("next_token_logits", "bigram table"),
        ("wte", "token embedding (wte)"),
        ("wpe", "position embedding (wpe)"),
        ("_norm", "norms"),  # attn.q_norm, attn.k_norm
        (".attn.", "attention"),
        (".mlp.", "mlp"),
        ("ln_", "norms"),
        ("lm_head", "lm head (untied)"),
    ):
        if part in name:
            return label
    raise ValueError(f"no component for parameter {name}")


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters per component; a tied head is counted once, under the token embedding."""
    counts: dict[str, int] = {}
    for name, p in build_on_meta(cfg).named_parameters():  # yields a shared (tied) tensor once
        counts[component(name)] = counts.get(component(name), 0) + p.numel()
    return counts


def flops_per_token(cfg: ModelConfig) -> int:
    """Training FLOPs (forward + backward) per token at full context T = block_size.

    6 per weight that takes part in a matrix multiply (2 forward, 4 backward) plus 12*L*H*Q*T for
    the attention scores Q K^T and the weighted sum of values (PaLM appendix B; nanoGPT's
    estimate_mfu). Embedding lookups, norms, activations and softmax are left out: they are a
    few percent at most. Divide achieved FLOP/s by the hardware peak for MFU.
    """
    model = build_on_meta(cfg)
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    if cfg.arch != "gpt":
        return 6 * matmul_weights  # a bigram model only looks rows up: no matmuls at all
    head_dim = cfg.n_embd // cfg.n_head
    return 6 * matmul_weights + 12 * cfg.n_layer * cfg.n_head * head_dim * cfg.block_size


def activation_floats_per_token(cfg: ModelConfig) -> int:
    """Floats autograd keeps per token for the backward pass, counted tensor by tensor (rough:
    it ignores small per-row statistics and dropout masks)."""
    logits = cfg.vocab_size  # the log-softmax of the logits, kept for the loss's backward
    if cfg.arch != "gpt":
        return logits
    h, kv = cfg.n_embd, cfg.kv_heads * (cfg.n_embd // cfg.n_head)
    hidden = mlp_hidden(cfg)
    per_layer = (
        4 * h  # the inputs and outputs of both norms (inputs of c_attn and c_fc)
        + h
        + 2 * kv  # q, k, v
        + h  # attention output (input of attn.c_proj)
        + (3 if cfg.activation == "swiglu" else 2) * hidden  # input and output of the activation
    )
    if cfg.attention == "manual":  # the explicit form keeps each head's T x T weights; SDPA recomputes them
        per_layer += cfg.n_head * cfg.block_size
    return cfg.n_layer * per_layer + 2 * h + logits  # + the embedded input and the final norm's output


def block_params(cfg: ModelConfig) -> int:
    """Parameters in one transformer block (FSDP's unit of gathering); 0 for a model without blocks."""
    model = build_on_meta(cfg)
    return sum(p.numel() for p in model.transformer.h[0].parameters()) if cfg.arch == "gpt" else 0


def training_memory(cfg: RunConfig, batch_size: int, world_size: int = 1) -> dict[str, int]:
    """Bytes per device to train in float32 with AdamW at micro-batch `batch_size` on `world_size`
    devices, laid out as cfg.train.parallel says (an estimate: allocator overhead, temporary buffers
    and the framework itself come on top).

    ddp: every device holds all the weights, gradients and AdamW state. fsdp: each holds 1/world_size
    of them, plus the whole weights and gradients of what it is computing: the root (embeddings, final
    norm, head) and two blocks (the one running and the next, gathered ahead). Activations are per
    micro-batch either way."""
    n = sum(param_counts(cfg.model).values())
    per_device = -(-n // world_size) if cfg.train.parallel == "fsdp" else n
    tokens = batch_size * cfg.model.block_size
    memory = {
        "weights": BYTES_PER_FLOAT * per_device,
        "gradients": BYTES_PER_FLOAT * per_device,
        "optimizer (AdamW: 2 per weight)": 2 * BYTES_PER_FLOAT * per_device,
    }
    if cfg.train.parallel == "fsdp":
        block = block_params(cfg.model)
        root = n - cfg.model.n_layer * block if cfg.model.arch == "gpt" else n
        memory["gathered (root + 2 blocks, weights and gradients)"] = 2 * BYTES_PER_FLOAT * (root + 2 * block)
    memory["activations"] = BYTES_PER_FLOAT * tokens * activation_floats_per_token(cfg.model)
    memory["total"] = sum(memory.values())
    return memory


def generation_memory(cfg: ModelConfig, num_samples: int, new_tokens: int, use_cache: bool = True) -> dict[str, int]:
    """Bytes that generating `new_tokens` for each of `num_samples` rows takes beyond the weights (an
    estimate of the largest parts: the tokens, the KV cache, and one forward pass over a full window)."""
    block, hidden = cfg.block_size, mlp_hidden(cfg)
    cache = use_cache and cfg.arch == "gpt"
    window = cfg.vocab_size + (3 if cfg.activation == "swiglu" else 2) * hidden + 4 * cfg.n_embd
    if cfg.attention == "manual":
        window += cfg.n_head * block
    memory = {
        "tokens": num_samples * (block + new_tokens) * BYTES_PER_GENERATED_TOKEN,
        "kv cache": 2 * cfg.n_layer * num_samples * block * cfg.kv_heads * (cfg.n_embd // cfg.n_head) * BYTES_PER_FLOAT
        if cache
        else 0,
        "forward pass": num_samples * block * window * BYTES_PER_FLOAT,
    }
    memory["total"] = sum(memory.values())
    return memory


@dataclass
class ModelInfo:
    config: RunConfig
    params: dict[str, int]
    flops_per_token: int
    batch_size: int
    world_size: int
    memory: dict[str, int]
    assumed_vocab: bool = False  # the config left vocab_size to the data, and ASSUMED_VOCAB stands in

    @property
    def total_params(self) -> int:
        return sum(self.params.values())


def describe(
    cfg: RunConfig, batch_size: int | None = None, parallel: str | None = None, world_size: int = 1
) -> ModelInfo:
    """The numbers `gptlab info` prints. A config that takes its vocabulary from the data is described
    with ASSUMED_VOCAB tokens, and says so. parallel: ddp or fsdp (default: the config's), over
    world_size devices, for the memory per device."""
    assumed = cfg.model.vocab_size == 0
    if assumed:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=ASSUMED_VOCAB))
    if parallel is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, parallel=parallel))
    batch_size = cfg.train.batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise GptlabError(f"batch size must be at least 1, got {batch_size}")
    if world_size < 1:
        raise GptlabError(f"world size must be at least 1, got {world_size}")
    cfg.validate()
    return ModelInfo(
        cfg,
        param_counts(cfg.model),
        flops_per_token(cfg.model),
        batch_size,
        world_size,
        training_memory(cfg, batch_size, world_size),
        assumed_vocab=assumed,
    )


def human(n: float, unit: str = "") -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {prefix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def format_info(info: ModelInfo) -> str:
    m = info.config.model
    shape = (
        "bigram table"
        if m.arch == "bigram"
        else (
            f"{m.n_layer} layers, {m.n_head} heads ({m.kv_heads} key/value), {m.n_embd} wide; {m.positions} positions, "
            f"{m.norm_position}-{m.norm}, {m.activation}, qk_norm {m.qk_norm}, bias {m.bias}, "
            f"{'tied' if m.tie_embeddings else 'untied'} head, {m.attention} attention"
        )
    )
    width = max(len(k) for k in [*info.params, *info.memory])
    vocab = (
        f"vocab {m.vocab_size} (assumed: Tiny Shakespeare's characters; this config takes it from the data, "
        "--vocab-size N gives yours)"
        if info.assumed_vocab
        else f"vocab {m.vocab_size}"
    )
    lines = [f"model: {shape}; {vocab}, block {m.block_size}", "", "parameters"]
    lines += [f"  {k:<{width}}  {v:>15,}  {100 * v / max(info.total_params, 1):5.1f}%" for k, v in info.params.items()]
    lines += [f"  {'total':<{width}}  {info.total_params:>15,}  ({human(info.total_params)})", ""]
    lines.append(
        f"training FLOPs per token: {human(info.flops_per_token, 'FLOP')} (6N + 12*L*H*Q*T at T = {m.block_size})"
    )
    tokens = info.batch_size * m.block_size
    lines.append(
        f"  per step of {info.batch_size} x {m.block_size} = {tokens:,} tokens: "
        f"{human(info.flops_per_token * tokens, 'FLOP')}"
    )
    layout = (
        f"per device, {info.config.train.parallel.upper()} over {info.world_size} devices"
        if info.world_size > 1 or info.config.train.parallel == "fsdp"
        else "on one device"
    )
    lines += [
        "",
        f"training memory {layout} at batch size {info.batch_size}, float32 + AdamW (an estimate; allocator and "
        "framework overhead come on top)",
    ]
    lines += [f"  {k:<{width}}  {human(v, 'B'):>12}" for k, v in info.memory.items()]
    return "\n".join(lines)
