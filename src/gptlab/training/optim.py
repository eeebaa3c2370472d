"""Optimizers: AdamW alone, or Muon for the hidden matrices with AdamW for everything else.

`build_optimizers` returns a list (one optimizer, or Muon then AdamW); the trainer steps each.
Every param group carries `lr_scale`, its peak rate relative to `learning_rate`, so one schedule
(`lr_at`) drives both optimizers.
"""

from __future__ import annotations

import torch
from torch import nn

from gptlab.config import TrainConfig
from gptlab.errors import GptlabError


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weights of the Linear layers inside the network: every 2-D matmul except the output
    head and anything shared with an embedding (a tied head). Muon orthogonalises these updates;
    embeddings, the head, norm gains and biases are not hidden matrices and stay with AdamW."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name != "lm_head" and id(module.weight) not in embedding_ids:
            found[id(module.weight)] = module.weight
    return [p for p in found.values() if p.requires_grad]


def adamw(groups: list[dict], cfg: TrainConfig) -> torch.optim.AdamW:
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)  # one kernel for all tensors: fastest
    except RuntimeError:  # this device has no fused kernel
        return torch.optim.AdamW(groups, **kwargs)


def build_optimizers(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    params = list({id(p): p for p in model.parameters() if p.requires_grad}.values())  # tied weights once
    optimizers: list[torch.optim.Optimizer] = []
    if cfg.optimizer == "muon":
        if not hasattr(torch.optim, "Muon"):
            raise GptlabError(
                f"optimizer muon needs torch.optim.Muon (PyTorch >= 2.9); this is torch {torch.__version__}: use "
                "--optimizer adamw"
            )
        muon_params = hidden_matrices(model)
        if muon_params:
            muon_ids = {id(p) for p in muon_params}
            params = [p for p in params if id(p) not in muon_ids]
            optimizers.append(
                torch.optim.Muon(
                    [{"params": muon_params, "lr_scale": cfg.muon_lr / cfg.learning_rate}],
                    lr=cfg.muon_lr,
                    weight_decay=cfg.weight_decay,
                    momentum=cfg.muon_momentum,
                )
            )
    # Decay the 2-D weights (matmuls, embeddings); never biases or norm gains, which set scales.
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    optimizers.append(adamw([g for g in groups if g["params"]], cfg))
    return optimizers


def set_lr(optimizers: list[torch.optim.Optimizer], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
