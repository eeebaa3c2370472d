"""--parallel fsdp on CPU with gloo: sharded training against one process (the correctness reference),
sharded checkpoints that resume on another number of processes, two "nodes" on loopback, and the
configurations refused before anything is written.

Tolerances, and why: sharded and whole training add the same numbers in another order (a
reduce-scatter instead of one process's sum), so they agree to float32 rounding. Measured here over
20 AdamW steps: losses 7e-8 relative, gradients 1.6e-7 absolute (their largest element ~7e-3), weights
1.5e-7 of the distance training moved them. The tests allow 1e-6, 1e-6 and 1e-4. Muon is the
exception: torch.optim.Muon orthogonalises in bfloat16 (8-bit mantissa), so the other order of
additions changes its roundings; its weights stay within 4.2e-2 of the distance moved (with float32
orthogonalisation they agreed to 4e-7), where orthogonalising each shard alone, the mistake to catch,
lands at 0.68. The test allows 0.1.
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import small_corpus

from gptlab.checkpoint import load_checkpoint
from gptlab.cli import main
from gptlab.config import build_config
from gptlab.data.batches import TokenData
from gptlab.data.prepare import prepare
from gptlab.errors import GptlabError
from gptlab.models.info import training_memory
from gptlab.training.distributed import Dist, check_layout
from gptlab.training.metrics import read_metrics
from gptlab.training.trainer import resume, train

HERE = Path(__file__).parent
# 20 steps, a checkpoint every 10 kept in checkpoints/ (to resume from), the lr schedule fixed at 20 steps
# so a 10-step run follows the first half of it.
SETTINGS = {
    "max_iters": 20,
    "eval_interval": 10,
    "eval_iters": 3,
    "log_interval": 1,
    "grad_accum": 2,
    "batch_size": 4,
    "lr_decay_iters": 20,
    "keep_last": 3,
    "sample_tokens": 8,
    "device": "cpu",
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args: str, nproc: int = 2, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def train_args(data: Path, out: Path, **changes) -> list[str]:
    settings = {**SETTINGS, **changes}
    return ["-m", "gptlab", "train", "--preset", "tiny", "--data", str(data), "--out", str(out)] + [
        f"--{k}={v}" for k, v in settings.items()
    ]


def assert_same_losses(reference: Path, run: Path, rel: float = 1e-6) -> None:
    by_step = {(r["kind"], r["step"]): r for r in read_metrics(run)}
    rows = [r for r in read_metrics(reference) if (r["kind"], r["step"]) in by_step]
    assert len(rows) == len(by_step), "the run logged steps the reference did not"
    for a in rows:
        b = by_step[(a["kind"], a["step"])]
        for key in ("loss", "val_loss", "train_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=rel), (a, b)


def rewound(run: Path, to: Path, step: int) -> Path:
    """A copy of `run` whose last/ is the checkpoint it kept at `step`: that run, interrupted there."""
    shutil.copytree(run, to)
    shutil.rmtree(to / "last")
    shutil.copytree(run / "checkpoints" / f"step-{step:08d}", to / "last")
    return to


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 20 steps sharded over two processes and in one process."""
    root = tmp_path_factory.mktemp("fsdp")
    (root / "corpus.txt").write_text(small_corpus())
    prepare([str(root / "corpus.txt")], root / "data")
    proc = torchrun(*train_args(root / "data", root / "two", parallel="fsdp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done:") == 1  # rank 0 alone prints
    train(build_config("tiny", SETTINGS), root / "data", root / "one", progress=False)
    return root


def test_fsdp_on_two_processes_trains_like_one_process(runs):
    assert_same_losses(runs / "one", runs / "two")
    last = runs / "two" / "last"
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata"} <= {p.name for p in last.iterdir()}  # a shard per rank
    assert not (last / "model.safetensors").exists()
    best = load_checkpoint(runs / "two" / "best")  # consolidated: one model.safetensors
    assert (best.dir / "model.safetensors").is_file()
    whole = load_checkpoint(runs / "one" / "best").model.state_dict()
    for name, value in best.model.state_dict().items():
        assert torch.allclose(value, whole[name], atol=1e-6), name
    # The sharded last/ loads into a plain model too (sample, eval and export-hf read it), equal to best/ (step 20).
    from_shards = load_checkpoint(last).model.state_dict()
    assert all(torch.equal(from_shards[name], value) for name, value in best.model.state_dict().items())


def test_gradients_clipping_and_muon_match_a_single_process(runs, tmp_path):
    out = tmp_path / "compare.json"
    proc = torchrun(str(HERE / "fsdp_compare.py"), str(runs / "data"), str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for step in results["adamw"]:
        assert step["same_names"]
        assert step["grad_norm"] == pytest.approx(0.05, rel=1e-4)  # clipped (grad_clip 0.05): the whole norm
        assert step["loss_rel"] < 1e-6 and step["grad_abs"] < 1e-6 and step["update_rel"] < 1e-4, step
    for step in results["muon"]:
        assert step["loss_rel"] < 1e-3 and step["update_rel"] < 0.1, step
    # the memory estimate's sharded weights are what a rank holds (FSDP pads each parameter's rows to 2 equal parts)
    cfg = build_config("tiny", {"parallel": "fsdp", "vocab_size": TokenData(runs / "data").vocab_size})
    assert training_memory(cfg, 1, world_size=2)["weights"] / 4 == pytest.approx(results["rank0_parameters"], rel=0.02)


def test_a_run_saved_on_two_processes_resumes_on_one(runs, tmp_path):
    for step in (0, 10):  # before the first update (a fresh optimizer) and midway
        run = rewound(runs / "two", tmp_path / f"from{step}", step)
        resume(run, {"parallel": "ddp"}, progress=False)  # one plain process reads the shards
        assert_same_losses(runs / "two", run, rel=1e-5)


def test_a_run_saved_on_one_process_resumes_on_two_nodes_on_loopback(runs, tmp_path):
    """Two torchrun launches with --nnodes 2, one process each, meeting at a c10d rendezvous on
    127.0.0.1, resume sharded a run that one process saved at step 10."""
    run = rewound(runs / "one", tmp_path / "from10", 10)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
    launch += ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "loopback"]
    train = ["-m", "gptlab", "train", "--resume", str(run), "--parallel", "fsdp"]
    # Both launches name the same address, so each would guess it hosts the rendezvous store and one would
    # lose the race to bind it (a suite run once hung there): say which one hosts.
    nodes = [
        subprocess.Popen(
            [*launch, "--rdzv_conf", f"is_host={host}", *train],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for host in ("true", "false")
    ]
    try:
        outputs = [node.communicate(timeout=180) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    stdout = "".join(out for out, _ in outputs)
    assert stdout.count("x 2 processes") == 1  # one job of two ranks, whose rank 0 alone prints
    assert "saved by 1 process(es), resumed on 2" in stdout
    assert_same_losses(runs / "one", run, rel=1e-5)
    assert {"__0_0.distcp", "__1_0.distcp"} <= {p.name for p in (run / "last").iterdir()}  # it goes on sharded


def test_a_refused_configuration_stops_every_rank_with_one_line_and_writes_nothing(runs, tmp_path):
    """The processes torchrun would start (its environment, set by hand so each exit code and stderr is seen)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    args = [sys.executable, *train_args(runs / "data", out, parallel="fsdp", grad_accum=3)]
    ranks = []
    for rank in range(2):
        env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        ranks.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [2, 2]
    (_, err0), (_, err1) = outputs
    assert err0.count("\n") == 1 and "grad_accum (3) must be a multiple of the number of processes (2)" in err0
    assert err1 == ""  # the same error: rank 0 says it once
    assert not out.exists()


def test_fsdp_without_torchrun_is_refused(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "run"
    assert main(train_args(runs / "data", out, parallel="fsdp")[2:]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--parallel fsdp shards the model across processes that torchrun starts" in err
    assert not out.exists()


def test_float16_is_refused_under_fsdp():
    cfg = build_config("tiny", {"parallel": "fsdp", "dtype": "float16", "grad_accum": 2})
    with pytest.raises(GptlabError, match="float16 cannot be used with --parallel fsdp"):
        check_layout(cfg.train, Dist(rank=0, local_rank=0, world_size=2), torch.device("cpu"))


def test_the_fits_table_in_docs_is_generated_from_the_estimate():
    spec = importlib.util.spec_from_file_location("make_scaling_table", HERE.parent / "docs" / "make_scaling_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    text = (HERE.parent / "docs" / "scaling.md").read_text()
    assert f"{script.START}\n{script.table()}\n{script.END}" in text, "run python docs/make_scaling_table.py --write"


def test_info_prints_the_memory_per_device_under_fsdp(capsys):
    assert main(["info", "gpt2", "--parallel", "fsdp", "--world-size", "4"]) == 0
    sharded = capsys.readouterr().out
    assert main(["info", "gpt2"]) == 0
    whole = capsys.readouterr().out
    assert "training memory per device, FSDP over 4 devices" in sharded

    def weights(text):  # "  weights   497.76 MB"
        line = next(line for line in text.splitlines() if line.strip().startswith("weights"))
        return float(line.split()[1])

    assert weights(sharded) == pytest.approx(weights(whole) / 4, rel=1e-3)
    assert "gathered (root + 2 blocks" in sharded
