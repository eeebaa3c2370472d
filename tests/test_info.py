"""`gptlab info`: parameter counts against GPT-2's published sizes, FLOPs against torch's own counter,
activation memory against what autograd actually saves."""

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gptlab.checkpoint import load_config
from gptlab.cli import main
from gptlab.config import ModelConfig, build_config, load_preset, preset_names
from gptlab.models import build_model
from gptlab.models.info import activation_floats_per_token, describe, flops_per_token, param_counts

BASE = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32, attention="manual")
VARIANTS = {
    "classic": {},
    "modern": dict(positions="rope", norm="rmsnorm", qk_norm=True, activation="relu2", tie_embeddings=False),
    "swiglu+gqa+bias": dict(activation="swiglu", n_kv_head=2, bias=True),
}


@pytest.mark.parametrize(
    "preset, total",  # the sizes transformers reports for OpenAI's checkpoints
    [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)],
)
def test_gpt2_presets_have_gpt2_parameter_counts(preset, total):
    counts = param_counts(load_preset(preset).model)
    assert sum(counts.values()) == total
    assert counts["position embedding (wpe)"] == 1024 * load_preset(preset).model.n_embd
    assert "lm head (untied)" not in counts  # tied: counted once, under wte


@pytest.mark.parametrize("variant", VARIANTS)
def test_param_counts_cover_every_parameter(variant):
    cfg = dataclasses.replace(BASE, **VARIANTS[variant])
    counts = param_counts(cfg)
    assert sum(counts.values()) == sum(p.numel() for p in build_model(cfg).parameters())
    assert ("lm head (untied)" in counts) == (not cfg.tie_embeddings)
    assert ("position embedding (wpe)" in counts) == (cfg.positions == "learned")


@pytest.mark.parametrize("variant", VARIANTS)
def test_flops_per_token_matches_torch_flop_counter(variant):
    # The manual attention multiplies full T x T score matrices, as the 12*L*H*Q*T term assumes.
    cfg = dataclasses.replace(BASE, **VARIANTS[variant])
    model = build_model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (3, cfg.block_size))
    with FlopCounterMode(display=False) as counter:
        _, loss = model(idx, idx)
        loss.backward()
    assert counter.get_total_flops() / idx.numel() == flops_per_token(cfg)


@pytest.mark.parametrize("variant", [*VARIANTS, "sdpa", "bigram"])
def test_activation_estimate_is_close_to_what_autograd_saves(variant):
    options = {"sdpa": dict(attention="sdpa"), "bigram": dict(arch="bigram")}.get(variant) or VARIANTS[variant]
    cfg = dataclasses.replace(BASE, **options)
    model = build_model(cfg)
    params = {p.data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        if t.data_ptr() not in params and t.is_floating_point():
            saved[(t.data_ptr(), t.shape)] = t.numel()
        return t

    idx = torch.randint(0, cfg.vocab_size, (4, cfg.block_size))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, idx)
    measured = sum(saved.values()) / idx.numel()
    assert 0.7 < activation_floats_per_token(cfg) / measured < 1.3, (activation_floats_per_token(cfg), measured)


def test_memory_estimate_adds_up_and_scales_with_batch():
    cfg = build_config("shakespeare-char-cpu", {"vocab_size": 65})
    one, eight = describe(cfg, 1), describe(cfg, 8)
    n = one.total_params
    assert (
        one.memory["weights"] == one.memory["gradients"] == 4 * n
        and one.memory["optimizer (AdamW: 2 per weight)"] == 8 * n
    )
    assert eight.memory["activations"] == 8 * one.memory["activations"]
    assert one.memory["total"] == sum(v for k, v in one.memory.items() if k != "total")


def test_info_cli_on_a_preset(capsys):
    assert main(["info", "gpt2", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "124,439,808" in out and "batch size 4" in out and "estimate" in out


@pytest.mark.parametrize("preset", [p for p in preset_names() if not load_preset(p).model.vocab_size])
def test_info_assumes_a_vocabulary_when_the_config_leaves_it_to_the_data_and_says_so(preset, capsys):
    assert main(["info", preset]) == 0
    out = capsys.readouterr().out
    assert "vocab 65 (assumed: Tiny Shakespeare's characters" in out and "--vocab-size N" in out
    assert main(["info", preset, "--vocab-size", "65"]) == 0
    given = capsys.readouterr().out
    assert "assumed" not in given and given.split("\n", 1)[1] == out.split("\n", 1)[1]  # the same numbers


def test_info_reads_checkpoints_and_config_files(tmp_path, capsys):
    from gptlab.checkpoint import save_checkpoint

    cfg = build_config("tiny", {"vocab_size": 65, "positions": "rope"})
    save_checkpoint(tmp_path / "run" / "best", build_model(cfg.model), cfg, {"tokenizer": {"kind": "char"}})
    cfg.save(tmp_path / "config.json")
    expected = describe(cfg)
    for source in (tmp_path / "run", tmp_path / "run" / "best", tmp_path / "config.json"):
        loaded = load_config(source)
        assert loaded == cfg and describe(loaded).params == expected.params
    assert main(["info", str(tmp_path / "run")]) == 0
    assert f"{expected.total_params:,}" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["info", str(tmp_path / "bad.json")]) == 2
