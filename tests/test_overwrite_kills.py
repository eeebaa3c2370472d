"""Issue 14, structure 1: `--overwrite` of prepare, train and export-hf, SIGKILLed at random moments. After
every kill the output is whole: the old directory byte for byte, or the complete new one, never neither
and never a mix. The next run cleans what the killed one left behind.

The runs are forked from a forkserver that imported torch and gptlab once, so a trial costs a fork.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import shutil
import time
from pathlib import Path

import pytest
import torch

from gptlab.atomic import verify_directory
from gptlab.checkpoint import RunDir
from gptlab.config import build_config
from gptlab.data.format import read_meta
from gptlab.data.prepare import prepare
from gptlab.interop.hf import export_hf
from gptlab.training.trainer import train
from tests.test_bad_inputs import tree_digest

TRIALS = 4


def run_config(seed: int):
    return build_config(
        "tiny",
        {"max_iters": 3, "eval_interval": 1, "eval_iters": 1, "sample_tokens": 0, "seed": seed, "device": "cpu"},
    )


def overwrite(verb: str, source: str, out: str, version: int) -> None:
    """In the child: write version `version` of the output over the existing one."""
    torch.set_num_threads(1)
    if verb == "prepare":
        prepare([source], Path(out), val_fraction=0.1 * version, overwrite=True)
    elif verb == "train":
        train(run_config(version), Path(source), Path(out), overwrite=True, progress=False)
    else:
        export_hf(Path(source) / f"run{version}", Path(out), overwrite=True)


def version_of(verb: str, out: Path, old: dict[str, str]) -> int:
    """1 if `out` is the old output byte for byte, 2 if it is a whole new one; anything else fails."""
    assert out.is_dir(), f"{out} is gone"
    if tree_digest(out) == old:
        return 1
    if verb == "prepare":
        verify_directory(out)
        assert read_meta(out)["split"]["val_fraction"] == pytest.approx(0.2)
    elif verb == "train":
        assert RunDir(out).read_record()["run"]["train"]["seed"] == 2
        for checkpoint in (out / "best", out / "last"):
            if checkpoint.exists():
                verify_directory(checkpoint)
    else:
        verify_directory(out)
        assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    return 2


@pytest.fixture(scope="module")
def forkserver():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch._dynamo", "gptlab.training.trainer", "gptlab.interop.hf", __name__])
    warm = ctx.Process(target=time.time)  # starts the server, so no trial pays for its imports
    warm.start()
    warm.join()
    return ctx


def in_child(ctx, args, kill_after: float | None = None) -> tuple[float, int]:
    proc = ctx.Process(target=overwrite, args=args)
    start = time.perf_counter()
    proc.start()
    proc.join(120 if kill_after is None else kill_after)
    if proc.is_alive():
        proc.kill()  # SIGKILL
    proc.join()
    return time.perf_counter() - start, proc.exitcode


@pytest.mark.parametrize("verb", ["prepare", "train", "export-hf"])
def test_overwrite_killed_at_random_moments_leaves_the_old_or_the_new_output(verb, forkserver, corpus_file, tmp_path):
    inputs, out = tmp_path / "inputs", tmp_path / "work" / "out"
    inputs.mkdir()
    if verb != "prepare":
        prepare([str(corpus_file)], inputs / "data")
    if verb == "export-hf":
        for version in (1, 2):
            train(run_config(version), inputs / "data", inputs / f"run{version}", progress=False)
    source = {"prepare": str(corpus_file), "train": str(inputs / "data"), "export-hf": str(inputs)}[verb]
    assert in_child(forkserver, (verb, source, str(out), 1))[1] == 0  # the old output
    old = tree_digest(out)
    shutil.copytree(out, inputs / "old")  # training again would not give the same bytes (timings in metrics)

    def put_back_the_old_one():
        shutil.rmtree(out)
        shutil.copytree(inputs / "old", out)

    duration, code = in_child(forkserver, (verb, source, str(out), 2))  # how long an overwrite takes
    assert code == 0 and version_of(verb, out, old) == 2
    put_back_the_old_one()

    rng = random.Random(verb)
    outcomes, killed = [], 0
    for trial in range(TRIALS):  # half the kills in the first half of the run, half in the second (the swap)
        moment = (trial % 2 + rng.random()) * duration / 2
        _, code = in_child(forkserver, (verb, source, str(out), 2), kill_after=moment)
        killed += code == -9
        outcomes.append(version_of(verb, out, old))
        if outcomes[-1] == 2:  # back to the old version for the next trial
            put_back_the_old_one()
    assert killed >= TRIALS // 2, f"only {killed} of {TRIALS} runs were killed before they ended"
    assert in_child(forkserver, (verb, source, str(out), 2))[1] == 0  # the next run cleans up after the killed ones
    assert version_of(verb, out, old) == 2
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no temporary directory, no lock file
