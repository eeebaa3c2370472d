"""Fault injection: training processes are killed with SIGKILL at random moments (most of a step's
time is spent writing its checkpoint, so most kills land mid-save), each is resumed, and

- after every kill the run's checkpoint is complete and loads (or none was written yet), and
- every resumed run ends with exactly the weights of an uninterrupted run (CPU, deterministic).

The runs are forked from a forkserver that has imported torch once, so a trial costs a fork, not an
interpreter start.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from pathlib import Path

import pytest
import torch

from gptlab.atomic import complete_directory, verify_directory
from gptlab.checkpoint import load_checkpoint, load_trainer_state, read_info
from gptlab.config import build_config
from gptlab.data.prepare import prepare
from gptlab.errors import GptlabError
from gptlab.training import trainer
from gptlab.training.trainer import resume, train

TRIALS = 20
STEPS = 6


def tiny_config():
    return build_config(
        "tiny",
        {
            "n_layer": 1,
            "n_head": 2,
            "n_embd": 16,
            "block_size": 16,
            "batch_size": 4,
            "max_iters": STEPS,
            "checkpoint_interval": 1,
            "eval_interval": 1000,
            "eval_iters": 1,
            "log_interval": 1,
            "sample_tokens": 0,
            "warmup_iters": 2,
            "device": "cpu",
        },
    )


def train_or_resume(data: str, run: str) -> None:
    """What a user does: resume the run if it has a checkpoint, else start it (again)."""
    torch.set_num_threads(1)  # the same arithmetic in every process
    trainer.plot_loss = lambda run_dir: None  # not under test here, and a second per picture
    run_dir = Path(run)
    last = complete_directory(run_dir / "last")
    if last is None:
        train(tiny_config(), Path(data), run_dir, overwrite=True, progress=False)
    elif load_trainer_state(last)["step"] < STEPS:
        resume(run_dir, progress=False)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(run / "last")
    assert ckpt.info["step"] == STEPS
    return ckpt.model.state_dict()


def check_loadable(run: Path) -> int | None:
    """The step of the run's last checkpoint; it and best/ must be complete and load. None: none written yet."""
    for name in ("last", "best"):
        if (run / name).exists():
            verify_directory(run / name)  # a directory under its final name is always complete
        found = complete_directory(run / name)
        if found is not None:
            load_checkpoint(found)
    last = complete_directory(run / "last")
    return None if last is None else load_trainer_state(last)["step"]


@pytest.fixture(scope="module")
def forkserver():
    ctx = multiprocessing.get_context("forkserver")
    # torch._dynamo: torch.optim imports it on first use, 7 s here; in the server it is paid once
    ctx.set_forkserver_preload(["torch._dynamo", "gptlab.training.trainer", __name__])
    warm = ctx.Process(target=os.getpid)  # starts the server, so no trial pays for its imports
    warm.start()
    warm.join()
    return ctx


def saved_step(run: Path) -> int:
    """The step of the run's newest complete checkpoint; -1 while there is none (or it is being replaced)."""
    try:
        last = complete_directory(run / "last")
        return -1 if last is None else read_info(last)["step"]
    except (OSError, GptlabError, KeyError):
        return -1


def run_in_child(ctx, data: Path, run: Path, kill: tuple[int, float] | None = None) -> float:
    """Run train_or_resume in a forked process; returns its run time. kill (step, delay): SIGKILL it
    `delay` seconds after its checkpoint of `step` appears (step -1: after it starts). Waiting for a
    step rather than a fixed time spreads the kills over the run however fast the machine is."""
    proc = ctx.Process(target=train_or_resume, args=(str(data), str(run)))
    start = time.perf_counter()
    proc.start()
    if kill is None:
        proc.join(120)  # bounded: a hung run fails the test
    else:
        step, delay = kill
        while proc.is_alive() and saved_step(run) < step and time.perf_counter() - start < 120:
            time.sleep(0.002)
        proc.join(delay)
    if proc.is_alive():
        proc.kill()  # SIGKILL; a process that ended meanwhile is no error
    proc.join()
    if kill is None:
        assert proc.exitcode == 0, (
            f"the run in {run} failed or hung (exit code {proc.exitcode}); its traceback is above"
        )
    return time.perf_counter() - start


def test_runs_killed_at_random_moments_resume_to_the_uninterrupted_weights(corpus_file, tmp_path, forkserver):
    data = tmp_path / "data"
    prepare([str(corpus_file)], data)
    reference = tmp_path / "reference"
    full_time = run_in_child(forkserver, data, reference)
    expected = final_weights(reference)

    rng = random.Random(0)
    steps_at_kill = []
    for trial in range(TRIALS):
        run = tmp_path / f"trial{trial}"
        run_in_child(forkserver, data, run, kill=(rng.randrange(-1, STEPS), rng.uniform(0, full_time / STEPS)))
        steps_at_kill.append(check_loadable(run))
        run_in_child(forkserver, data, run)  # resume (or start again) to the end
        got = final_weights(run)
        assert got.keys() == expected.keys()
        for name in expected:
            assert torch.equal(got[name], expected[name]), f"trial {trial}: {name} differs after resuming"
    # The kills landed at many points: before the first checkpoint and at several different steps.
    assert len({s for s in steps_at_kill if s is not None and s < STEPS}) >= 3, steps_at_kill
