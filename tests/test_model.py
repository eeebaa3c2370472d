import math

import pytest
import torch

from gptlab.config import ModelConfig
from gptlab.models import GPT


def make(cfg: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg).eval()


def test_causal_mask_future_tokens_do_not_change_past_logits(tiny_config):
    model = make(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 16))
    changed = idx.clone()
    t = 7
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % tiny_config.vocab_size
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_loss_at_init_is_close_to_uniform(tiny_config):
    cfg = ModelConfig(**{**tiny_config.__dict__, "vocab_size": 65})
    model = make(cfg)
    idx, targets = torch.randint(0, 65, (2, 8, 16))  # targets unrelated to inputs
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(65)) < 0.1


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tiny_config):
    model = make(tiny_config).train()
    x = torch.randint(0, tiny_config.vocab_size, (4, 16))
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _, first = model(x, y)
    for _ in range(20):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first.item() - 1.0


def test_manual_attention_matches_sdpa(tiny_config):
    sdpa = make(tiny_config)
    manual = GPT(ModelConfig(**{**tiny_config.__dict__, "attention": "manual"})).eval()
    manual.load_state_dict(sdpa.state_dict())
    idx = torch.randint(0, tiny_config.vocab_size, (3, 16))
    torch.testing.assert_close(manual(idx)[0], sdpa(idx)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
def test_kv_cache_gives_the_same_logits_as_recomputation(tiny_config, attention):
    cfg = ModelConfig(**{**tiny_config.__dict__, "attention": attention})
    model = make(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    full, _ = model(idx)
    cache = model.new_cache(2, cfg.block_size)
    pieces = [model(idx[:, :5], cache=cache)[0]]  # prefill 5, then a chunk of 3, then one at a time
    pieces.append(model(idx[:, 5:8], cache=cache)[0])
    for t in range(8, 16):
        pieces.append(model(idx[:, t : t + 1], cache=cache)[0])
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_head_is_tied_and_residual_projections_use_scaled_init():
    cfg = ModelConfig(vocab_size=100, block_size=8, n_layer=8, n_head=4, n_embd=256)
    model = make(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight
    std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.001
    assert abs(model.transformer.h[0].attn.c_attn.weight.std().item() - 0.02) < 0.001


def test_longer_than_block_size_is_refused(tiny_config):
    model = make(tiny_config)
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))
