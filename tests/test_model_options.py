"""Every model option: what it changes, that the fast paths match the references, that caching holds."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from gptlab.config import ModelConfig, build_config
from gptlab.errors import GptlabError
from gptlab.models import GPT, Bigram, build_model
from gptlab.models.gpt import apply_rope, rope_tables

BASE = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)
MODERN = dict(positions="rope", norm="rmsnorm", qk_norm=True, activation="relu2", tie_embeddings=False, bias=False)

# every option that touches attention, alone and together, for SDPA-vs-manual and cache-vs-recompute
ATTENTION_VARIANTS = {
    "rope": dict(positions="rope"),
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "qk_norm": dict(qk_norm=True),
    "post_ln": dict(norm_position="post"),
    "modern+gqa+swiglu": dict(MODERN, n_kv_head=2, activation="swiglu"),
}


def make(seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(dataclasses.replace(BASE, **options)).eval()


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Norm gains and biases start at 1 and 0; move them so a test also exercises them."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
def test_sdpa_matches_manual_attention(variant):
    sdpa = randomize(make(**ATTENTION_VARIANTS[variant]))
    manual = make(**ATTENTION_VARIANTS[variant], attention="manual")
    manual.load_state_dict(sdpa.state_dict())
    idx = torch.randint(0, BASE.vocab_size, (3, 16))
    torch.testing.assert_close(manual(idx)[0], sdpa(idx)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
def test_kv_cache_matches_recomputation(variant, attention):
    options = dict(ATTENTION_VARIANTS[variant], attention=attention)
    model = randomize(make(**options))
    idx = torch.randint(0, BASE.vocab_size, (2, 16))
    full, _ = model(idx)
    cache = model.new_cache(2, BASE.block_size)
    assert cache.k.shape[2] == model.config.kv_heads  # GQA caches only the shared key/value heads
    pieces = [model(idx[:, :5], cache=cache)[0], model(idx[:, 5:8], cache=cache)[0]]
    pieces += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(8, 16)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
@pytest.mark.parametrize("variant", ["learned", *ATTENTION_VARIANTS])
def test_batched_rows_of_different_lengths_give_each_row_its_own_logits(variant, attention):
    """The server's batch: rows prefilled alone at different lengths, then stepped together; a row moved."""
    model = randomize(make(**ATTENTION_VARIANTS.get(variant, {}), attention=attention))
    texts = [torch.randint(0, BASE.vocab_size, (1, 16)) for _ in range(3)]
    alone = [model(t)[0] for t in texts]  # each row recomputed by itself, no cache
    cache = model.new_cache(4, BASE.block_size)
    lengths = [3, 7, 11]
    got = [[model(t[:, :n], cache=cache.rows(i, i + 1))[0]] for i, (t, n) in enumerate(zip(texts, lengths))]
    for _ in range(2):  # one new token per row, rows at different positions
        out = model(torch.cat([t[:, n : n + 1] for t, n in zip(texts, lengths)]), cache=cache.rows(0, 3))[0]
        for i in range(3):
            got[i].append(out[i : i + 1])
        lengths = [n + 1 for n in lengths]
    out = model(torch.cat([t[:, n : n + 2] for t, n in zip(texts, lengths)]), cache=cache.rows(0, 3))[0]
    for i in range(3):  # two new tokens per row at once
        got[i].append(out[i : i + 1])
    lengths = [n + 2 for n in lengths]
    assert cache.lengths.tolist() == [*lengths, 0]
    cache.move_row(2, 0)  # row 0 leaves; row 2 takes its place, rows 0..1 step on
    order = [2, 1]
    out = model(torch.cat([texts[i][:, lengths[i] : lengths[i] + 1] for i in order]), cache=cache.rows(0, 2))[0]
    for row, i in enumerate(order):
        got[i].append(out[row : row + 1])
    for i in range(3):
        n = sum(piece.size(1) for piece in got[i])
        torch.testing.assert_close(torch.cat(got[i], dim=1), alone[i][:, :n], atol=1e-5, rtol=1e-5)


def test_a_prefill_without_logits_fills_the_same_cache():
    model = randomize(make(positions="rope"))
    idx = torch.randint(0, BASE.vocab_size, (2, 9))
    full, plain = model.new_cache(2, 16), model.new_cache(2, 16)
    assert model(idx[:, :8], cache=plain, logits=False) == (None, None)
    model(idx[:, :8], cache=full)
    torch.testing.assert_close(model(idx[:, 8:], cache=plain)[0], model(idx[:, 8:], cache=full)[0])
    assert make(arch="bigram")(idx, logits=False) == (None, None)


def test_default_options_keep_gpt2_names():
    model = make(n_layer=1, bias=True)
    per_layer = [
        f"transformer.h.0.{n}.{w}"
        for n in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
        for w in ("weight", "bias")
    ]
    expected = {
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.ln_f.weight",
        "transformer.ln_f.bias",
        "lm_head.weight",
        *per_layer,
    }
    assert set(model.state_dict()) == expected
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize(
    "activation, reference",
    [
        ("gelu", lambda h: F.gelu(h, approximate="tanh")),
        ("relu", F.relu),
        ("relu2", lambda h: F.relu(h) ** 2),
        ("swiglu", lambda h: F.silu(h[..., : h.size(-1) // 2]) * h[..., h.size(-1) // 2 :]),
    ],
)
def test_activation_option_is_the_named_function(activation, reference):
    mlp = make(activation=activation).transformer.h[0].mlp
    x = torch.randn(2, 5, BASE.n_embd)
    torch.testing.assert_close(mlp(x), mlp.c_proj(reference(mlp.c_fc(x))))
    if activation == "swiglu":  # gate + up + down hold as many weights as GPT-2's up + down
        assert abs(sum(p.numel() for p in mlp.parameters()) - 8 * BASE.n_embd**2) <= 3 * BASE.n_embd


@pytest.mark.parametrize("norm, module", [("layernorm", torch.nn.LayerNorm), ("rmsnorm", torch.nn.RMSNorm)])
def test_norm_option(norm, module):
    model = make(norm=norm)
    norms = [m for name, m in model.named_modules() if name.endswith(("ln_1", "ln_2", "ln_f"))]
    assert len(norms) == 2 * BASE.n_layer + 1 and all(type(m) is module for m in norms)
    x = torch.randn(4, BASE.n_embd) * 3 + 1
    y = norms[0](x)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(4), atol=1e-3)  # unit RMS either way
    assert torch.allclose(y.mean(-1), torch.zeros(4), atol=1e-4) == (norm == "layernorm")  # only LayerNorm centres


@pytest.mark.parametrize("position", ["pre", "post"])
def test_norm_position(position):
    block = randomize(make(norm_position=position)).transformer.h[0]
    x = torch.randn(2, 6, BASE.n_embd)
    if position == "pre":
        h = x + block.attn(block.ln_1(x))
        expected = h + block.mlp(block.ln_2(h))
    else:
        h = block.ln_1(x + block.attn(x))
        expected = block.ln_2(h + block.mlp(h))
    torch.testing.assert_close(block(x), expected)


def test_rope_replaces_the_position_table_and_scores_depend_only_on_distance():
    model = make(positions="rope")
    assert "wpe" not in model.transformer and "rope_cos" not in model.state_dict()  # derived, not stored
    cos, sin = rope_tables(model.config)
    q, k = torch.randn(2, 1, 1, 8), torch.randn(2, 1, 1, 8)
    cos, sin = cos[:, :4], sin[:, :4]  # an 8-wide head

    def score(m, n):
        return (apply_rope(q, cos[m : m + 1], sin[m : m + 1]) * apply_rope(k, cos[n : n + 1], sin[n : n + 1])).sum(-1)

    torch.testing.assert_close(score(5, 2), score(12, 9))
    assert not torch.allclose(score(5, 2), score(5, 4))


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    idx = torch.randint(0, BASE.vocab_size, (2, 12))
    for qk_norm in (True, False):
        model = make(qk_norm=qk_norm, norm="rmsnorm")
        with torch.no_grad():
            for block in model.transformer.h:
                block.attn.c_attn.weight.mul_(20.0)  # past the init scale, so attention is far from uniform
        before, _ = model(idx)
        with torch.no_grad():
            for block in model.transformer.h:
                block.attn.c_attn.weight[: 2 * BASE.n_embd] *= 10.0  # queries and keys 10x larger
        after, _ = model(idx)
        assert torch.allclose(before, after, atol=1e-4) == qk_norm


@pytest.mark.parametrize("bias", [True, False])
def test_bias_option(bias):
    model = make(bias=bias)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head]
    assert all((m.bias is not None) == bias for m in linears)
    assert (model.transformer.ln_f.bias is not None) == bias


def test_tied_or_untied_head():
    tied, untied = make(), make(tie_embeddings=False)
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_params() == tied.num_params() + BASE.vocab_size * BASE.n_embd
    with torch.no_grad():  # the head alone moves the logits, the embedding alone does not touch the head
        untied.transformer.wte.weight.zero_()
    assert untied.lm_head.weight.abs().sum() > 0


def test_grouped_query_attention_equals_multi_head_with_repeated_key_value_heads():
    gqa = randomize(make(n_kv_head=2, positions="rope"))
    mha = make(positions="rope")
    state = gqa.state_dict()
    D, H, KV = BASE.n_embd // BASE.n_head, BASE.n_head, 2
    for layer in range(BASE.n_layer):
        key = f"transformer.h.{layer}.attn.c_attn.weight"
        w = state[key]
        assert w.shape == ((H + 2 * KV) * D, BASE.n_embd)
        q, k, v = w.split([H * D, KV * D, KV * D])
        repeat = lambda t: t.view(KV, D, -1).repeat_interleave(H // KV, dim=0).reshape(H * D, -1)  # noqa: E731
        state[key] = torch.cat([q, repeat(k), repeat(v)])
    mha.load_state_dict(state)
    idx = torch.randint(0, BASE.vocab_size, (2, 16))
    torch.testing.assert_close(gqa(idx)[0], mha(idx)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(n_kv_head=3), "n_kv_head .* must divide n_head"),
        (dict(n_kv_head=-1), "n_kv_head"),
        (dict(positions="rope", n_embd=12, n_head=4), "head size .* must be even"),
        (dict(activation="tanh"), "activation must be one of"),
        (dict(norm="batchnorm"), "norm must be one of"),
        (dict(norm_position="middle"), "norm_position must be one of"),
        (dict(positions="alibi"), "positions must be one of"),
        (dict(arch="lstm"), "arch must be one of"),
    ],
)
def test_bad_options_say_what_is_wrong(options, message):
    with pytest.raises(GptlabError, match=message):
        dataclasses.replace(BASE, **options).validate()


def test_bigram_is_a_table_of_next_token_logits():
    model = make(arch="bigram")
    assert isinstance(model, Bigram) and model.num_params() == BASE.vocab_size**2
    idx = torch.randint(0, BASE.vocab_size, (2, 40))  # longer than block_size: a bigram has no context limit
    logits, loss = model(idx, idx)
    torch.testing.assert_close(logits, model.next_token_logits.weight[idx])
    assert abs(loss.item() - math.log(BASE.vocab_size)) < 0.05  # near-uniform at init
    cache = model.new_cache(2, 40)
    assert cache.k.numel() == 0  # nothing to cache, only positions to count
    torch.testing.assert_close(
        torch.cat([model(idx[:, :30], cache=cache)[0], model(idx[:, 30:], cache=cache)[0]], 1), logits
    )
    assert cache.length == 40


def test_bigram_trains_and_samples_through_the_same_paths(corpus_file, tmp_path):
    from gptlab.checkpoint import load_checkpoint
    from gptlab.data.prepare import prepare
    from gptlab.generation.generate import generate
    from gptlab.training.trainer import train

    prepare([corpus_file], tmp_path / "data")
    cfg = build_config("bigram", {"max_iters": 60, "eval_interval": 30, "eval_iters": 4, "device": "cpu"})
    result = train(cfg, tmp_path / "data", tmp_path / "run", progress=False)
    assert result.final_val_loss < math.log(cfg.model.vocab_size) - 0.5
    ckpt = load_checkpoint(tmp_path / "run")
    assert isinstance(ckpt.model, Bigram)
    ids = generate(ckpt.model, ckpt.tokenizer.encode("The "), max_new_tokens=100, temperature=0.0)[0]
    assert len(ids) == 100  # past block_size (64) through the cache-rebuilding path
    assert ids == generate(ckpt.model, ckpt.tokenizer.encode("The "), 100, temperature=0.0, use_cache=False)[0]


def test_modern_options_train_and_reload_through_a_checkpoint(corpus_file, tmp_path):
    from gptlab.checkpoint import load_checkpoint
    from gptlab.data.prepare import prepare
    from gptlab.training.trainer import train

    prepare([corpus_file], tmp_path / "data")
    cfg = build_config(
        "tiny", {**MODERN, "n_kv_head": 1, "max_iters": 20, "eval_interval": 20, "eval_iters": 2, "device": "cpu"}
    )
    train(cfg, tmp_path / "data", tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "last")
    assert isinstance(ckpt.model, GPT) and ckpt.config.model == cfg.model
    idx = torch.randint(0, cfg.model.vocab_size, (1, 8))
    again = build_model(ckpt.config.model)
    again.load_state_dict(ckpt.model.state_dict())
    torch.testing.assert_close(again.eval()(idx)[0], ckpt.model(idx)[0])
