"""Run by tests/test_fsdp.py under `torchrun --nproc_per_node 2`, not collected by pytest itself.

Trains the same tiny model two ways side by side, on the same batches: sharded over the two processes
(--parallel fsdp) and whole in each process (a plain single-process Trainer, the reference). After each
step it records how far apart the losses, the gradients each optimizer stepped with (after clipping)
and the updated weights are, and rank 0 writes that to a JSON file: first for AdamW, then for Muon.

    torchrun --nproc_per_node 2 tests/fsdp_compare.py DATA_DIR OUT.json
"""

import json
import sys

import torch
from torch.distributed.tensor import DTensor

from gptlab.config import build_config
from gptlab.data.batches import TokenData
from gptlab.training.distributed import SINGLE, init_distributed, shutdown_distributed, sum_over_ranks
from gptlab.training.trainer import Trainer

SETTINGS = {"device": "cpu", "batch_size": 4, "grad_accum": 2, "sample_tokens": 0, "grad_clip": 0.05}


def whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t  # collective for a DTensor: every rank calls it


def flat(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([tensors[name].flatten() for name in sorted(tensors)])


def record_gradients(trainer: Trainer, into: dict[str, torch.Tensor]) -> None:
    names = {id(p): name for name, p in trainer.model.named_parameters()}

    def hook(opt, args, kwargs):
        for group in opt.param_groups:
            into.update({names[id(p)]: whole(p.grad).clone() for p in group["params"] if p.grad is not None})

    for opt in trainer.optimizers:
        opt.register_step_pre_hook(hook)


def compare(data: TokenData, optimizer: str, steps: int) -> list[dict[str, float]]:
    def config(parallel):
        return build_config(
            "tiny", {**SETTINGS, "optimizer": optimizer, "vocab_size": data.vocab_size, "parallel": parallel}
        )

    me, device = init_distributed("cpu", "fsdp")
    sharded = Trainer(config("fsdp"), data, "unused", me, device)
    assert sharded.sharded
    reference = Trainer(config("ddp"), data, "unused", SINGLE, device)
    grads_sharded, grads_whole = {}, {}
    record_gradients(sharded, grads_sharded)
    record_gradients(reference, grads_whole)
    start = {name: p.detach().clone() for name, p in reference.model.named_parameters()}
    out = []
    for _ in range(steps):
        loss_sharded = sum_over_ranks(me, sharded.train_step()[0]).item() / me.world_size
        loss_whole = reference.train_step()[0].item()
        weights_sharded = {name: whole(p.detach()) for name, p in sharded.model.named_parameters()}
        weights_whole = {name: p.detach() for name, p in reference.model.named_parameters()}
        out.append(
            {
                "loss_rel": abs(loss_sharded - loss_whole) / abs(loss_whole),
                "grad_abs": max((grads_sharded[k] - grads_whole[k]).abs().max().item() for k in grads_whole),
                "grad_norm": flat(grads_sharded).norm().item(),
                # how far apart the two runs' weights are, as a share of how far training moved them
                "update_rel": (flat(weights_sharded) - flat(weights_whole)).norm().item()
                / (flat(weights_whole) - flat(start)).norm().item(),
                "same_names": sorted(grads_sharded) == sorted(grads_whole),
            }
        )
    return out


if __name__ == "__main__":
    data = TokenData(sys.argv[1])
    torch.manual_seed(0)
    results = {"adamw": compare(data, "adamw", 20), "muon": compare(data, "muon", 5)}
    sharded = Trainer(
        build_config("tiny", {**SETTINGS, "vocab_size": data.vocab_size, "parallel": "fsdp"}),
        data,
        "unused",
        *init_distributed("cpu", "fsdp"),
    )
    results["rank0_parameters"] = sum(p.to_local().numel() for p in sharded.model.parameters())
    if int(torch.distributed.get_rank()) == 0:
        with open(sys.argv[2], "w") as f:
            json.dump(results, f)
    shutdown_distributed()
