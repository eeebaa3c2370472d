"""Pictures of a trained model's insides, each a PNG drawn with matplotlib from a real checkpoint.

The numbers behind the attention and next-token pictures come from data functions (prompt_attention,
top_next_tokens) that the web playground's /v1/inspect endpoint calls too, so a picture and the page
show the same thing. They take anything with a `model` and its `tokenizer` (a Checkpoint, a TextGenerator).

plot_attention      attention weights per layer and head for a prompt, tokens on both axes
plot_next_token     the next-token distribution after a prompt (top candidates)
plot_embeddings     the token embeddings projected to 2-D by PCA, labelled with their tokens
plot_loss_curves    the loss curves of one or several runs on one plot
plot_position_loss  mean loss by position in the context window
plot_residual_stream how much each attention and MLP branch writes into the residual stream
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from gptlab.checkpoint import Checkpoint, RunDir
from gptlab.errors import GptlabError
from gptlab.evaluation.eval import evaluate_ids, split_ids
from gptlab.generation.streaming import REPLACEMENT
from gptlab.outputs import check_output_folder
from gptlab.tokenizers import Tokenizer
from gptlab.training.metrics import read_metrics


class LanguageModel(Protocol):
    """What the data functions need: a Checkpoint has it, and so does a TextGenerator."""

    model: torch.nn.Module
    tokenizer: Tokenizer


SHOWN = {" ": "␣", "\n": "↵", "\t": "⇥"}  # whitespace drawn as a visible glyph


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def save(fig, out: Path, dpi: int = 110) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return out


def printable(text: str) -> str:
    return "".join(SHOWN.get(c, c) for c in text) or "∅"


def token_label(lm: LanguageModel, token_id: int) -> str:
    """A token as a short printable label: whitespace made visible, end-of-text as <eot>."""
    if token_id == lm.tokenizer.eot_id:
        return "<eot>"
    return printable(lm.tokenizer.decode([token_id]))


def token_labels(lm: LanguageModel, ids: list[int]) -> list[str]:
    """A label for each token of a text, no character split across labels.

    A byte-level token (bpe, gpt2) can hold part of a multi-byte character, and alone it decodes to
    U+FFFD. Such a run of tokens is labelled with the text the run decodes to as a whole, numbered:
    "é" cut in two bytes gives "é (1/2)", "é (2/2)". A run still broken after 4 tokens (a UTF-8
    character has at most 4 bytes) is broken text, left as it is."""
    labels = [token_label(lm, i) for i in ids]
    i = 0
    while i < len(ids):
        end = i + 1
        if REPLACEMENT in labels[i]:
            while end < len(ids) and end - i < 4 and REPLACEMENT in lm.tokenizer.decode(ids[i:end]):
                end += 1
            whole = lm.tokenizer.decode(ids[i:end])
            if end - i > 1 and REPLACEMENT not in whole:
                labels[i:end] = [f"{printable(whole)} ({k + 1}/{end - i})" for k in range(end - i)]
            else:
                end = i + 1
        i = end
    return labels


def encode_prompt(lm: LanguageModel, prompt: str) -> list[int]:
    """The prompt as the model sees it at the start of a document: end-of-text, then its tokens
    (the last block_size of them)."""
    ids = [lm.tokenizer.eot_id] + lm.tokenizer.encode(prompt)
    return ids[-lm.model.config.block_size :]


def attention_blocks(model: torch.nn.Module):
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    if not blocks or not all(hasattr(b, "attn") and hasattr(b.attn, "attn_dropout") for b in blocks):
        raise GptlabError(f"this model ({type(model).__name__}) has no attention layers to show; use a GPT checkpoint")
    return blocks


@torch.no_grad()
def attention_weights(model: torch.nn.Module, ids: list[int]) -> list[torch.Tensor]:
    """softmax(Q K^T / sqrt(d_head) + mask) for each layer, as (n_head, T, T) tensors on the CPU.

    The weights are caught where the model computes them: each layer runs its explicit
    (attention="manual") path for this one call, and a forward hook on the attention dropout,
    which the weights pass through, keeps them. The model's own code and options (whatever its
    positions or normalisation of q and k) produce them; nothing is recomputed here.
    """
    blocks = attention_blocks(model)
    caught: list[list[torch.Tensor]] = [[] for _ in blocks]
    hooks, modes = [], []
    for layer, block in enumerate(blocks):
        modes.append(block.attn.attention)
        block.attn.attention = "manual"
        hooks.append(
            block.attn.attn_dropout.register_forward_hook(
                lambda m, i, out, layer=layer: caught[layer].append(out.detach().float().cpu())
            )
        )
    was_training = model.training
    model.eval()
    try:
        model(torch.tensor([ids], device=next(model.parameters()).device))
    finally:
        for block, mode in zip(blocks, modes):
            block.attn.attention = mode
        for h in hooks:
            h.remove()
        model.train(was_training)
    # One call per head with (B, T, T), or one call with (B, H, T, T): either way, batch row 0.
    return [t[0][0] if t[0].dim() == 4 else torch.stack([w[0] for w in t]) for t in caught]


@dataclass
class Attention:
    """The attention of every layer and head over a prompt: weights[layer][head, query, key]."""

    ids: list[int]  # the tokens the model saw: end-of-text, then the prompt's
    labels: list[str]  # one printable label per token (token_labels)
    weights: list[torch.Tensor]  # per layer, (n_head, T, T); each row sums to 1

    def check_layer(self, layer: int) -> int:
        if not 0 <= layer < len(self.weights):
            raise GptlabError(f"layer {layer} does not exist; this model has layers 0..{len(self.weights) - 1}")
        return layer


def prompt_attention(lm: LanguageModel, prompt: str) -> Attention:
    """The numbers behind plot_attention (and the playground's heatmaps)."""
    ids = encode_prompt(lm, prompt)
    return Attention(ids, token_labels(lm, ids), attention_weights(lm.model, ids))


def plot_attention(ckpt: Checkpoint, prompt: str, out: Path, layers: list[int] | None = None) -> Path:
    """A grid of heatmaps, one row per layer and one column per head: row = query token (the one
    being predicted from), column = key token it looks at. Zero above the diagonal: the causal mask."""
    attention = prompt_attention(ckpt, prompt)
    weights, labels = attention.weights, attention.labels
    layers = list(range(len(weights))) if layers is None else [attention.check_layer(layer) for layer in layers]
    n_head = weights[0].size(0)
    T = len(labels)
    cell = max(2.2, 0.16 * T + 0.8)
    plt = pyplot()
    fig, axes = plt.subplots(
        len(layers), n_head, figsize=(cell * n_head + 1, cell * len(layers) + 0.5), squeeze=False, layout="constrained"
    )
    for r, layer in enumerate(layers):
        for h in range(n_head):
            ax = axes[r][h]
            im = ax.imshow(weights[layer][h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {layer}, head {h}", fontsize=9)
            # every panel has the same tokens: label the left column and the bottom row only
            ax.set_xticks(range(T), labels if r == len(layers) - 1 else [], fontsize=8, rotation=90)
            ax.set_yticks(range(T), labels if h == 0 else [], fontsize=8)
            if h == 0:
                ax.set_ylabel("query (predicting from)", fontsize=8)
            if r == len(layers) - 1:
                ax.set_xlabel("key (attended to)", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label="attention weight")
    fig.suptitle(f"attention for {prompt!r}", fontsize=11)
    return save(fig, out)


@torch.no_grad()
def next_token_distribution(lm: LanguageModel, prompt: str, temperature: float = 1.0) -> torch.Tensor:
    """Probabilities of every token coming next after the prompt, at a sampling temperature."""
    if not (0 < temperature < math.inf):
        raise GptlabError(
            f"temperature must be a finite number > 0 for a distribution, got {temperature} (0 means greedy: all "
            "mass on the top token)"
        )
    ids = encode_prompt(lm, prompt)
    logits, _ = lm.model(torch.tensor([ids], device=next(lm.model.parameters()).device))
    return torch.softmax(logits[0, -1].float().cpu() / temperature, dim=-1)


@dataclass
class NextTokens:
    """The most likely next tokens after a prompt (ranked at the first temperature) and their probabilities."""

    ids: list[int]
    labels: list[str]
    temperatures: tuple[float, ...]
    probs: torch.Tensor  # (len(temperatures), len(ids)): probs[k, i] = P(ids[i]) at temperatures[k]


def top_next_tokens(
    lm: LanguageModel, prompt: str, top: int = 20, temperatures: tuple[float, ...] = (1.0,)
) -> NextTokens:
    """The numbers behind plot_next_token (and the playground's bar chart)."""
    if top < 1:
        raise GptlabError(f"the number of next-token candidates must be at least 1, got {top}")
    dists = torch.stack([next_token_distribution(lm, prompt, t) for t in temperatures])
    ids = dists[0].topk(min(top, dists.size(1))).indices
    return NextTokens(ids.tolist(), [token_label(lm, int(i)) for i in ids], tuple(temperatures), dists[:, ids])


def plot_next_token(
    ckpt: Checkpoint, prompt: str, out: Path, top: int = 20, temperatures: tuple[float, ...] = (1.0,)
) -> Path:
    """Horizontal bars of the `top` most likely next tokens, one set of bars per temperature."""
    nxt = top_next_tokens(ckpt, prompt, top, temperatures)
    n = len(nxt.ids)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.28 * n + 1.5))
    height = 0.8 / len(temperatures)
    for k, t in enumerate(temperatures):
        y = [i + k * height for i in range(n)]
        ax.barh(y, nxt.probs[k].numpy(), height=height, label=f"temperature {t:g}")
    ax.set_yticks([i + 0.4 - height / 2 for i in range(n)], nxt.labels, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("probability")
    ax.set_title(f"next token after {prompt[-40:]!r}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    if len(temperatures) > 1:
        ax.legend(fontsize=8)
    return save(fig, out)


def token_category(label: str) -> str:
    c = label[0]
    if label in ("<eot>", "∅") or c in SHOWN.values():
        return "whitespace / end of text"
    kind = unicodedata.category(c)
    return {"Lu": "upper-case letter", "Ll": "lower-case letter", "Nd": "digit"}.get(
        kind, "punctuation / other" if kind[0] in "PS" else "other"
    )


def embedding_projection(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The token embedding matrix wte, centred, projected on its first two principal components.

    Returns (coords (vocab, 2), share of the variance each component explains)."""
    wte = getattr(getattr(model, "transformer", None), "wte", None)
    if wte is None:
        raise GptlabError(
            f"this model ({type(model).__name__}) has no token embeddings (wte) to project; use a GPT checkpoint"
        )
    w = wte.weight.detach().float().cpu()
    w = w - w.mean(dim=0)
    _, s, vh = torch.linalg.svd(w, full_matrices=False)
    return w @ vh[:2].T, (s[:2] ** 2) / (s**2).sum()


def plot_embeddings(ckpt: Checkpoint, out: Path, max_labels: int = 300) -> Path:
    """PCA of the token embeddings; every token labelled when the vocabulary has at most `max_labels`
    tokens (char and small word vocabularies), else the first `max_labels` ids."""
    coords, share = embedding_projection(ckpt.model)
    labels = [token_label(ckpt, i) for i in range(min(coords.size(0), max_labels))]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 8))
    cats = [token_category(label) for label in labels]
    colors = dict(zip(sorted(set(cats)), plt.get_cmap("tab10").colors))
    ax.scatter(coords[:, 0], coords[:, 1], s=3, color="lightgray")
    for i, (label, cat) in enumerate(zip(labels, cats)):
        ax.annotate(
            label, (coords[i, 0].item(), coords[i, 1].item()), fontsize=11, ha="center", va="center", color=colors[cat]
        )
    for cat, color in colors.items():
        ax.scatter([], [], color=color, label=cat)
    ax.legend(fontsize=8, loc="best")
    ax.set_xlabel(f"principal component 1 ({share[0]:.0%} of the variance)")
    ax.set_ylabel(f"principal component 2 ({share[1]:.0%} of the variance)")
    ax.set_title(
        f"token embeddings (wte), {coords.size(0)} tokens"
        + (f", first {max_labels} labelled" if coords.size(0) > max_labels else "")
    )
    ax.grid(alpha=0.3)
    return save(fig, out)


def plot_loss_curves(run_dirs: list[Path], out: Path, names: list[str] | None = None) -> Path:
    """The periodic val (solid) and train (dashed) loss estimates of each run, on one plot."""
    run_dirs = [Path(r) for r in run_dirs]
    if names is None:  # a run's folder name, or its whole path where two runs share a name
        short = [r.name for r in run_dirs]
        names = [n if short.count(n) == 1 else str(r) for n, r in zip(short, run_dirs)]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for k, run in enumerate(run_dirs):
        if not RunDir(run).metrics.is_file():
            raise GptlabError(
                f"{run} has no {RunDir(run).metrics.name}; point at a run directory written by `gptlab train`"
            )
        evals = [r for r in read_metrics(run) if r["kind"] == "eval"]
        name = names[k]
        color = plt.get_cmap("tab10")(k % 10)
        steps = [r["step"] for r in evals]
        ax.plot(steps, [r["val_loss"] for r in evals], "o-", ms=3, color=color, label=f"{name} val")
        ax.plot(steps, [r["train_loss"] for r in evals], "--", color=color, alpha=0.6, label=f"{name} train")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title("loss curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, out)


def position_loss(losses: torch.Tensor, positions: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss at each position of the window, and the 95% half-width (1.96 * std / sqrt(n))."""
    count = torch.bincount(positions, minlength=block_size).double()
    total = torch.bincount(positions, weights=losses.double(), minlength=block_size)
    squares = torch.bincount(positions, weights=losses.double() ** 2, minlength=block_size)
    mean = total / count
    var = (squares / count - mean**2).clamp_min(0) * count / (count - 1).clamp_min(1)
    return mean, 1.96 * (var / count).sqrt()


def plot_position_loss(
    losses: torch.Tensor, positions: torch.Tensor, block_size: int, out: Path, title: str = ""
) -> Path:
    """Mean loss against the number of tokens of context (from `evaluation.eval.evaluate_ids`)."""
    mean, ci = position_loss(losses, positions, block_size)
    x = torch.arange(block_size)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, mean, color="tab:blue")
    ax.fill_between(x, mean - ci, mean + ci, color="tab:blue", alpha=0.25, label="95% interval")
    ax.set_xlabel("position in the window (tokens of context before the predicted one)")
    ax.set_ylabel("mean loss (nats/token)")
    ax.set_title(title or "loss by position")
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, out)


@torch.no_grad()
def residual_norms(model: torch.nn.Module, ids: list[int]) -> dict[str, list[float]]:
    """Mean L2 norm (over positions) of the residual stream entering each block and of what its
    attention and MLP branches add to it, caught with forward hooks on each block's attn and mlp."""
    blocks = attention_blocks(model)
    norms: dict[str, list[float]] = {"stream": [], "attn": [], "mlp": []}

    def keep(name):
        return lambda m, i, out: norms[name].append(out.float().norm(dim=-1).mean().item())

    hooks = []
    for block in blocks:
        hooks.append(
            block.register_forward_pre_hook(
                lambda m, args: norms["stream"].append(args[0].float().norm(dim=-1).mean().item())
            )
        )
        hooks += [block.attn.register_forward_hook(keep("attn")), block.mlp.register_forward_hook(keep("mlp"))]
    hooks.append(
        model.transformer.ln_f.register_forward_pre_hook(
            lambda m, args: norms["stream"].append(args[0].float().norm(dim=-1).mean().item())
        )
    )
    was_training = model.training
    model.eval()
    try:
        model(torch.tensor([ids], device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return norms


def plot_residual_stream(ckpt: Checkpoint, text: str, out: Path) -> Path:
    """Bars: the size of the residual stream before each block (and before ln_f), and of each branch's write."""
    ids = encode_prompt(ckpt, text)
    norms = residual_norms(ckpt.model, ids)
    n = len(norms["attn"])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(n + 1), norms["stream"], "o-", color="black", label="residual stream x (entering block / ln_f)")
    ax.bar(
        [i - 0.2 + 0.5 for i in range(n)],
        norms["attn"],
        width=0.35,
        label="added by the attention branch",
        color="tab:orange",
    )
    ax.bar(
        [i + 0.2 + 0.5 for i in range(n)], norms["mlp"], width=0.35, label="added by the MLP branch", color="tab:green"
    )
    ax.set_xticks(range(n + 1), [f"block {i}" for i in range(n)] + ["ln_f"])
    ax.set_ylabel("mean L2 norm per position")
    ax.set_title(f"the residual stream through the layers ({len(ids)} tokens)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, out)


PICTURES = ("attention", "next-token", "embeddings", "loss", "position-loss", "residual")


def draw(
    ckpt: Checkpoint,
    out: Path,
    pictures: tuple[str, ...] = PICTURES,
    *,
    prompt: str = "ROMEO:\nWhat light",
    layers: list[int] | None = None,
    top: int = 20,
    temperatures: tuple[float, ...] = (1.0,),
    split: str = "val",
    max_tokens: int = 200_000,
    compare: list[Path] = (),
) -> list[Path]:
    """Draw the named pictures of `ckpt` into the folder `out`; returns the files written."""
    if top < 1:
        raise GptlabError(f"--top must be at least 1 (candidates to show), got {top}")
    if max_tokens < 2:
        raise GptlabError(f"--max-tokens must be at least 2, got {max_tokens}")
    out = Path(out)
    check_output_folder(out)
    if top < 1:
        raise GptlabError(f"--top must be at least 1, got {top}")
    written = []
    if "attention" in pictures:
        written.append(plot_attention(ckpt, prompt, out / "attention.png", layers))
    if "next-token" in pictures:
        written.append(plot_next_token(ckpt, prompt, out / "next_token.png", top, temperatures))
    if "embeddings" in pictures:
        written.append(plot_embeddings(ckpt, out / "embeddings.png"))
    if "loss" in pictures:
        run = ckpt.dir.parent if RunDir(ckpt.dir.parent).metrics.is_file() else ckpt.dir
        written.append(plot_loss_curves([run, *compare], out / "loss_curves.png"))
    if "position-loss" in pictures:
        ids, name, size = split_ids(ckpt, split, max_tokens=max_tokens)
        _, losses, positions = evaluate_ids(ckpt, ids, name, size)
        title = f"loss by position, {split} split"
        written.append(
            plot_position_loss(losses, positions, ckpt.config.model.block_size, out / "position_loss.png", title)
        )
    if "residual" in pictures:
        written.append(plot_residual_stream(ckpt, prompt, out / "residual_stream.png"))
    return written
