import os
import subprocess
import sys

import pytest
import torch

from gptlab.config import build_config
from gptlab.data.prepare import prepare
from gptlab.errors import GptlabError
from gptlab.training.distributed import Dist, check_layout
from gptlab.training.metrics import read_metrics
from gptlab.training.trainer import train

# The global batch: 2 micro-batches of 4 sequences per step, on one process or shared by two.
SETTINGS = {
    "max_iters": 6,
    "eval_interval": 3,
    "eval_iters": 3,
    "log_interval": 1,
    "grad_accum": 2,
    "batch_size": 4,
    "device": "cpu",
    "sample_tokens": 0,
}


@pytest.fixture
def prepared(corpus_file, tmp_path):
    out = tmp_path / "data"
    prepare([str(corpus_file)], out)
    return out


def test_two_gloo_processes_train_like_one_with_the_same_global_batch(prepared, tmp_path):
    train(build_config("tiny", SETTINGS), prepared, tmp_path / "one")
    args = [f"--{k}={v}" for k, v in SETTINGS.items()]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "gptlab",
        "train",
        "--preset",
        "tiny",
        "--data",
        str(prepared),
        "--out",
        str(tmp_path / "two"),
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [(r["kind"], r["step"]) for r in two] == [(r["kind"], r["step"]) for r in one]  # rank 0 alone wrote
    for a, b in zip(one, two):
        for key in ("loss", "val_loss", "train_loss"):
            if key in a:  # equal but for the order of float additions in the gradient all-reduce
                assert b[key] == pytest.approx(a[key], rel=1e-5), (a, b)
    assert proc.stdout.count("done:") == 1  # only rank 0 prints


def test_grad_accum_must_split_evenly_over_the_processes():
    cfg = build_config("tiny", {**SETTINGS, "grad_accum": 3})
    with pytest.raises(GptlabError, match="multiple of the number of processes"):
        check_layout(cfg.train, Dist(rank=0, local_rank=0, world_size=2), torch.device("cpu"))
