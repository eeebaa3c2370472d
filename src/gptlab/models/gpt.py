"""A GPT written out in full: token embeddings, transformer blocks, a final norm and the LM head.

With the default options this is GPT-2: learned positions (wpe), pre-LN blocks with LayerNorm,
GELU MLP, multi-head attention and a head tied to the token embeddings. Names follow GPT-2
(wte, wpe, h, ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, ln_f, lm_head) so those
weights map one-to-one onto GPT-2 checkpoints. The other options (ModelConfig) swap one part each:
rotary positions, RMSNorm, post-LN, qk-norm, ReLU / ReLU^2 / SwiGLU, grouped-query attention, an
untied head. The model knows nothing about files or tokenizers.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.config import ModelConfig


class KVCache:
    """Keys and values of every layer for the positions seen so far, pre-allocated to `max_len`.

    Generation prefills it with the prompt once, then feeds one new position per step, so each
    step costs attention over the past instead of a full forward pass over the whole text.
    With grouped-query attention it holds only the n_kv_head shared heads (that is the point of GQA).
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device, dtype):
        head_dim = cfg.n_embd // cfg.n_head
        n_layer = cfg.n_layer if cfg.arch == "gpt" else 0  # a bigram model keeps no keys or values
        shape = (n_layer, batch_size, cfg.kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # positions already stored

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (B, H_kv, T, D) for `layer`; return all keys and values so far."""
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} requested")
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=1e-5)
    return nn.LayerNorm(dim, bias=cfg.bias)


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (block_size, head_dim / 2) of the angle position * theta^(-2i / head_dim)."""
    head_dim = cfg.n_embd // cfg.n_head
    inv_freq = cfg.rope_theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(cfg.block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i + D/2}) of x (B, H, T, D) by its position's angle (cos, sin: (T, D/2)).

    The dot product of a rotated query and key then depends only on their distance.
    """
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


def manual_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: nn.Module
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_head) + mask) V, head by head: the textbook form, the reference for SDPA.

    q: (B, H, T, D); k, v: (B, H_kv, S, D), each key/value head shared by H / H_kv query heads;
    mask: (T, S) bool, True where a query may attend.
    """
    group = q.size(1) // k.size(1)
    heads = []
    for h in range(q.size(1)):
        kh, vh = k[:, h // group], v[:, h // group]
        scores = q[:, h] @ kh.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, T, S)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = dropout(F.softmax(scores, dim=-1))
        heads.append(weights @ vh)  # (B, T, D)
    return torch.stack(heads, dim=1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.n_kv_head = cfg.kv_heads
        self.head_dim = cfg.n_embd // cfg.n_head
        self.dropout = cfg.dropout
        self.attention = cfg.attention
        # q, k, v in one matmul: n_head query heads, n_kv_head key and value heads
        self.c_attn = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * self.n_kv_head) * self.head_dim, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        if cfg.qk_norm:  # bounds the attention logits, which lets a larger learning rate stay stable
            self.q_norm = make_norm(cfg, self.head_dim)
            self.k_norm = make_norm(cfg, self.head_dim)
        self.qk_norm = cfg.qk_norm
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        D = self.head_dim
        q, k, v = self.c_attn(x).split([self.n_head * D, self.n_kv_head * D, self.n_kv_head * D], dim=2)
        q = q.view(B, T, self.n_head, D).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, D).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, D).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:  # rotated at their absolute positions, so cached keys stay valid
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)
        # Query t (at absolute position past + t) sees keys 0..past + t. With no past this is the
        # usual lower triangle; a single new query sees everything, so it needs no mask at all.
        mask = None if T == 1 else torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        if self.attention == "manual":
            y = manual_attention(q, k, v, mask, self.attn_dropout)
        else:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=None if past == 0 else mask,
                is_causal=past == 0 and T > 1,
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.n_kv_head != self.n_head,
            )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


def relu2(x: torch.Tensor) -> torch.Tensor:
    """ReLU squared (Primer; modded-nanogpt): as cheap as ReLU, trains faster than GELU at small scale."""
    return F.relu(x).square()


def swiglu(x: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up, with gate and up the two halves of one matmul's output (LLaMA)."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


ACTIVATIONS = {"gelu": partial(F.gelu, approximate="tanh"), "relu": F.relu, "relu2": relu2, "swiglu": swiglu}


def mlp_hidden(cfg: ModelConfig) -> int:
    """4 x n_embd; SwiGLU's three matrices use two-thirds of that so they hold as many weights as two."""
    return 2 * 4 * cfg.n_embd // 3 if cfg.activation == "swiglu" else 4 * cfg.n_embd


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = mlp_hidden(cfg)
        # SwiGLU's gate and up projections are one matmul, split in the activation
        self.c_fc = nn.Linear(cfg.n_embd, 2 * hidden if cfg.activation == "swiglu" else hidden, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.activation]
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN: x + attn(ln(x)), then x + mlp(ln(x)). Post-LN: ln(x + attn(x)), then ln(x + mlp(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        self.ln_1 = make_norm(cfg, cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg, cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, rope=None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), cache, layer, rope)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, cache, layer, rope))
        return self.ln_2(x + self.mlp(x))


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, T, vocab) against targets (B, T); -1 marks positions to skip."""
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set before building the model")
        self.config = cfg
        modules = dict(wte=nn.Embedding(cfg.vocab_size, cfg.n_embd))
        if cfg.positions == "learned":
            modules["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        modules.update(
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=make_norm(cfg, cfg.n_embd),
        )
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # tied: one matrix reads and writes tokens
        if cfg.positions == "rope":  # derived from the config, so not saved with the weights
            cos, sin = rope_tables(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch's output projection shrinks with depth, so the
        # sum of 2 * n_layer branches keeps the residual stream's variance near where it started.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, vocab); with targets also the mean cross-entropy.

        With a cache, idx holds only the new positions; they continue after cache.length.
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        x = self.transformer.wte(idx)
        rope = None
        if self.config.positions == "learned":
            x = x + self.transformer.wpe(torch.arange(start, start + T, device=idx.device))
        else:
            rope = (self.rope_cos[start : start + T], self.rope_sin[start : start + T])
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer, rope)
        if cache is not None:
            cache.length += T
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None if targets is None else next_token_loss(logits, targets)
        return logits, loss
