import math
import re

import matplotlib.image
import pytest
import torch
import torch.nn.functional as F

from gptlab.checkpoint import load_checkpoint
from gptlab.cli import main
from gptlab.errors import GptlabError
from gptlab.evaluation import inspect
from gptlab.evaluation.eval import evaluate_ids, split_ids
from gptlab.generation.streaming import REPLACEMENT


@pytest.fixture(scope="module")
def ckpt(tiny_run):
    return load_checkpoint(tiny_run)


def reference_attention(model, ids):
    """Attention recomputed from each block's c_attn output (the model without RoPE/GQA options)."""
    out = []
    x = model.transformer.wte(ids) + model.transformer.wpe(torch.arange(ids.size(1)))
    for block in model.transformer.h:
        B, T, C = x.shape
        H = block.attn.n_head
        q, k, _ = block.attn.c_attn(block.ln_1(x)).split(C, dim=2)
        q, k = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k))
        scores = q @ k.transpose(-2, -1) / math.sqrt(C // H)
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        out.append(F.softmax(scores, dim=-1)[0])
        x = block(x)
    return out


def test_attention_weights_are_the_models_own(ckpt):
    ids = inspect.encode_prompt(ckpt, "The king speaks")
    weights = inspect.attention_weights(ckpt.model, ids)
    cfg = ckpt.config.model
    assert len(weights) == cfg.n_layer and weights[0].shape == (cfg.n_head, len(ids), len(ids))
    with torch.no_grad():
        expected = reference_attention(ckpt.model, torch.tensor([ids]))
    for got, want in zip(weights, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        assert torch.all(got.triu(diagonal=1) == 0)  # the causal mask: nothing from the future
        torch.testing.assert_close(got.sum(-1), torch.ones(cfg.n_head, len(ids)))
    # the model is left as it was: its attention path, and no hooks
    assert all(
        b.attn.attention == cfg.attention and not b.attn.attn_dropout._forward_hooks for b in ckpt.model.transformer.h
    )


def test_next_token_distribution_is_the_softmax_of_the_last_logits(ckpt):
    ids = inspect.encode_prompt(ckpt, "The ki")
    with torch.no_grad():
        logits = ckpt.model(torch.tensor([ids]))[0][0, -1]
    probs = inspect.next_token_distribution(ckpt, "The ki")
    torch.testing.assert_close(probs, torch.softmax(logits, -1))
    cooler = inspect.next_token_distribution(ckpt, "The ki", temperature=0.5)
    assert cooler.max() > probs.max() and cooler.argmax() == probs.argmax()
    with pytest.raises(GptlabError, match="temperature"):
        inspect.next_token_distribution(ckpt, "The ki", temperature=0)


def test_embedding_projection_is_the_top_two_principal_components(ckpt):
    coords, share = inspect.embedding_projection(ckpt.model)
    w = ckpt.model.transformer.wte.weight.detach()
    w = w - w.mean(0)
    eig = torch.linalg.eigvalsh(w.T @ w).flip(0)  # variance along each principal axis, largest first
    torch.testing.assert_close((coords**2).sum(0), eig[:2], rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(share, eig[:2] / eig.sum(), rtol=1e-3, atol=1e-5)


def test_position_loss_averages_each_position(ckpt):
    ids, name, size = split_ids(ckpt, "val")
    _, losses, positions = evaluate_ids(ckpt, ids, name, size)
    mean, ci = inspect.position_loss(losses, positions, ckpt.config.model.block_size)
    for p in (0, 5, ckpt.config.model.block_size - 1):
        at = losses[positions == p].double()
        assert mean[p].item() == pytest.approx(at.mean().item())
        assert ci[p].item() == pytest.approx(1.96 * at.std().item() / math.sqrt(len(at)))


def test_residual_stream_starts_at_the_embeddings(ckpt):
    ids = inspect.encode_prompt(ckpt, "The king")
    norms = inspect.residual_norms(ckpt.model, ids)
    n_layer = ckpt.config.model.n_layer
    assert [len(norms[k]) for k in ("stream", "attn", "mlp")] == [n_layer + 1, n_layer, n_layer]
    with torch.no_grad():
        x = ckpt.model.transformer.wte(torch.tensor(ids)) + ckpt.model.transformer.wpe(torch.arange(len(ids)))
    assert norms["stream"][0] == pytest.approx(x.norm(dim=-1).mean().item(), rel=1e-5)


def readable_png(path, min_size=(200, 200)):
    image = matplotlib.image.imread(path)
    assert image.shape[0] >= min_size[0] and image.shape[1] >= min_size[1]
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_every_picture_is_written_from_a_trained_model(tiny_run, tmp_path, capsys):
    out = tmp_path / "pictures"
    assert (
        main(
            [
                "inspect",
                str(tiny_run),
                "--out",
                str(out),
                "--prompt",
                "The king",
                "--compare",
                str(tiny_run),
                "--temperature",
                "1",
                "0.5",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    names = {
        "attention.png",
        "next_token.png",
        "embeddings.png",
        "loss_curves.png",
        "position_loss.png",
        "residual_stream.png",
    }
    assert {p.name for p in out.iterdir()} == names
    printed = capsys.readouterr().out
    for name in names:
        readable_png(out / name)
        assert f"wrote {out / name}" in printed


def test_inspect_refuses_what_it_cannot_draw(tiny_run, tmp_path, capsys):
    assert (
        main(
            [
                "inspect",
                str(tiny_run),
                "--out",
                str(tmp_path),
                "--only",
                "attention",
                "--layers",
                "7",
                "--prompt",
                "The king",
            ]
        )
        == 2
    )
    assert "layer 7 does not exist" in capsys.readouterr().err
    assert main(["inspect", str(tiny_run), "--out", str(tmp_path), "--only", "loss", "--compare", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_a_model_without_attention_is_refused():
    class Bigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = torch.nn.Embedding(4, 4)

    with pytest.raises(GptlabError, match="no attention layers"):
        inspect.attention_weights(Bigram(), [0, 1])


def test_the_pictures_numbers_come_from_the_data_functions(ckpt):
    attention = inspect.prompt_attention(ckpt, "The king")
    assert attention.ids == inspect.encode_prompt(ckpt, "The king")
    assert attention.labels == ["<eot>", "T", "h", "e", "␣", "k", "i", "n", "g"]
    for got, want in zip(attention.weights, inspect.attention_weights(ckpt.model, attention.ids)):
        torch.testing.assert_close(got, want)
    with pytest.raises(GptlabError, match="layer 9 does not exist"):
        attention.check_layer(9)
    nxt = inspect.top_next_tokens(ckpt, "The ki", top=5, temperatures=(1.0, 0.5))
    probs = [inspect.next_token_distribution(ckpt, "The ki", t) for t in (1.0, 0.5)]
    assert nxt.ids == probs[0].topk(5).indices.tolist()
    assert nxt.labels == [inspect.token_label(ckpt, i) for i in nxt.ids]
    torch.testing.assert_close(nxt.probs, torch.stack([p[nxt.ids] for p in probs]))
    with pytest.raises(GptlabError, match="at least 1"):
        inspect.top_next_tokens(ckpt, "The ki", top=0)


class Pair:
    """A model and a tokenizer: what the data functions need (as a Checkpoint or a TextGenerator has)."""

    def __init__(self, tokenizer, block_size=64):
        from gptlab.config import ModelConfig
        from gptlab.models import GPT

        torch.manual_seed(0)
        self.tokenizer = tokenizer
        cfg = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16)
        self.model = GPT(cfg).eval()


def byte_level_tokenizer(kind, request):
    from gptlab.tokenizers import train_tokenizer
    from gptlab.tokenizers.gpt2 import GPT2Tokenizer

    if kind == "gpt2":
        return GPT2Tokenizer.from_file(request.getfixturevalue("shared_data") / "gpt2" / "gpt2.tiktoken")
    # 257 tokens: the 256 bytes and end-of-text, so every multi-byte character is cut into bytes
    return train_tokenizer("bpe", ["café ’ 😀 plain text"], vocab_size=257)


@pytest.mark.parametrize("kind", ["bpe", "gpt2"])
def test_token_labels_never_split_a_character(kind, request):
    tokenizer = byte_level_tokenizer(kind, request)
    lm = Pair(tokenizer)
    ids = inspect.encode_prompt(lm, "café ’ 😀!")
    assert any(REPLACEMENT in tokenizer.decode([i]) for i in ids)  # the case at hand: tokens holding partial bytes
    labels = inspect.token_labels(lm, ids)
    assert len(labels) == len(ids) and not any(REPLACEMENT in label for label in labels)
    # each run of byte tokens is labelled with the characters it makes together, numbered 1/n .. n/n
    groups, i = [], 0
    while i < len(labels):
        numbered = re.fullmatch(r"(.+) \(1/(\d)\)", labels[i])
        n = int(numbered.group(2)) if numbered else 1
        if numbered:
            whole = numbered.group(1)
            assert labels[i : i + n] == [f"{whole} ({j}/{n})" for j in range(1, n + 1)]
            assert inspect.printable(tokenizer.decode(ids[i : i + n])) == whole
            groups.append(whole)
        i += n
    assert any("😀" in whole for whole in groups) and any("’" in whole for whole in groups)
    # a character still unfinished at the end has nothing to be grouped with: it stays as it is
    assert REPLACEMENT in inspect.token_labels(lm, tokenizer.encode("😀")[:-1])[-1]
