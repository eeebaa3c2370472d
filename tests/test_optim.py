import pytest
import torch

from gptlab.config import TrainConfig
from gptlab.errors import GptlabError
from gptlab.models import GPT
from gptlab.training.optim import build_optimizers, hidden_matrices, set_lr
from gptlab.training.schedule import lr_at


def names_of(model, params):
    ids = {id(p) for p in params}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_muon_gets_exactly_the_blocks_matrices(tiny_config):
    model = GPT(tiny_config)
    expected = sorted(
        f"transformer.h.{i}.{m}.weight"
        for i in range(tiny_config.n_layer)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    )
    assert names_of(model, hidden_matrices(model)) == expected  # not wte, wpe, the tied head, norms


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs PyTorch >= 2.9")
def test_muon_and_adamw_split_the_parameters_once(tiny_config):
    model = GPT(tiny_config)
    cfg = TrainConfig(optimizer="muon", learning_rate=1e-3, muon_lr=0.02)
    muon, adamw = build_optimizers(model, cfg)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    muon_params = [p for g in muon.param_groups for p in g["params"]]
    adamw_params = [p for g in adamw.param_groups for p in g["params"]]
    assert names_of(model, muon_params) == names_of(model, hidden_matrices(model))
    all_ids = [id(p) for p in muon_params + adamw_params]
    assert sorted(all_ids) == sorted({id(p) for p in model.parameters()})  # each exactly once
    set_lr([muon, adamw], 5e-4)  # the schedule's value scales both
    assert muon.param_groups[0]["lr"] == pytest.approx(0.01) and adamw.param_groups[0]["lr"] == pytest.approx(5e-4)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs PyTorch >= 2.9")
def test_muon_updates_a_hidden_matrix_by_an_orthogonalised_step(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    muon, adamw = build_optimizers(model, TrainConfig(optimizer="muon", muon_lr=0.02, weight_decay=0.0))
    w = model.transformer.h[0].mlp.c_fc.weight  # (64, 16)
    before = w.detach().clone()
    _, loss = model(torch.randint(0, 50, (4, 16)), torch.randint(0, 50, (4, 16)))
    loss.backward()
    g = torch.linalg.svdvals(w.grad)
    muon.step()
    # Newton-Schulz pulls the gradient's singular values towards 1 (roughly 0.7..1.2 after its five
    # bf16 iterations; the very smallest lag behind); Muon scales the step by sqrt(rows / cols).
    s = torch.linalg.svdvals((before - w.detach()) / (0.02 * (64 / 16) ** 0.5))
    assert s.max() < 1.5 and (s > 0.5).float().mean() >= 0.75, s
    assert g[0] / g[len(g) // 2] > 2 * (s[0] / s[len(s) // 2])  # far flatter than the gradient's spectrum


def test_muon_on_a_torch_without_it_is_a_clear_error(tiny_config, monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon", raising=False)
    with pytest.raises(GptlabError, match="use --optimizer adamw"):
        build_optimizers(GPT(tiny_config), TrainConfig(optimizer="muon"))


def test_adamw_alone_is_fused_and_decays_only_matrices(tiny_config):
    model = GPT(tiny_config)
    (opt,) = build_optimizers(model, TrainConfig(weight_decay=0.1))
    assert opt.param_groups[0]["fused"] is True  # CPU has a fused AdamW kernel in the torch we use
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.dim() >= 2), name


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_each_optimizer_fits_a_fixed_batch(tiny_config, optimizer):
    if optimizer == "muon" and not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon needs PyTorch >= 2.9")
    torch.manual_seed(0)
    model = GPT(tiny_config)
    optimizers = build_optimizers(model, TrainConfig(optimizer=optimizer, learning_rate=1e-2, muon_lr=0.05))
    x = torch.randint(0, tiny_config.vocab_size, (4, 16))
    first = None
    for _ in range(12):
        _, loss = model(x, x.roll(1, dims=1))
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad()
        first = first if first is not None else loss.item()
    assert loss.item() < first - 1.0


def test_warmup_stable_decay_holds_the_peak_then_decays_linearly():
    cfg = TrainConfig(
        lr_schedule="wsd", learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=100, decay_fraction=0.2
    )
    lrs = [lr_at(s, cfg) for s in range(110)]
    assert lrs[0] < lrs[5] < lrs[9] < 1e-3
    assert all(lr == 1e-3 for lr in lrs[10:80])  # stable
    assert lrs[90] == pytest.approx(1e-3 - 0.5 * (1e-3 - 1e-4))  # halfway down the last 20 steps
    assert all(a > b for a, b in zip(lrs[80:100], lrs[81:100]))
    assert all(lr == 1e-4 for lr in lrs[100:])
