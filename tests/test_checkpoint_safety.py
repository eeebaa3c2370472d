"""Checkpoints survive crashes and full disks: written aside, fsynced, renamed, checksummed."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from gptlab import atomic, checkpoint
from gptlab.atomic import CHECKSUMS, old_path
from gptlab.checkpoint import keep_history, load_checkpoint, load_trainer_state, save_checkpoint
from gptlab.config import RunConfig
from gptlab.errors import GptlabError
from gptlab.models import GPT
from gptlab.tokenizers.char import CharTokenizer


@pytest.fixture
def saver(tiny_config, tmp_path):
    """save(step) writes RUN/last from a model whose weights encode the step; returns the run dir."""
    tok_file = CharTokenizer([chr(65 + i) for i in range(tiny_config.vocab_size - 1)]).save(tmp_path)
    cfg = RunConfig(model=tiny_config)
    model = GPT(tiny_config)
    run = tmp_path / "run"

    def save(step: int, name: str = "last"):
        with torch.no_grad():
            model.transformer.wpe.weight.fill_(float(step))
        info = {
            "tokenizer": {"kind": "char", "file": tok_file.name, "vocab_size": tiny_config.vocab_size},
            "step": step,
        }
        return save_checkpoint(run / name, model, cfg, info, files=[tok_file], trainer_state={"step": step})

    save.run = run
    return save


def saved_step(path) -> int:
    ckpt = load_checkpoint(path)
    assert ckpt.info["step"] == load_trainer_state(ckpt.dir)["step"] == int(ckpt.model.transformer.wpe.weight[0, 0])
    return ckpt.info["step"]


def leftovers(run) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("."))


def test_every_file_and_directory_is_fsynced_and_checksummed(saver, monkeypatch):
    synced = []
    real_fsync_path = atomic.fsync_path
    monkeypatch.setattr(atomic, "fsync_path", lambda p: (synced.append(p.name), real_fsync_path(p)))
    last = saver(1)
    files = {"model.safetensors", "config.json", "tokenizer.json", "trainer.pt"}
    assert set(atomic.json.loads((last / CHECKSUMS).read_text())["sha256"]) == files
    assert files | {CHECKSUMS, "run"} <= set(synced)  # each file, and the parent after the rename
    assert saved_step(last) == 1


def test_a_save_that_dies_midway_leaves_the_previous_checkpoint(saver, monkeypatch):
    saver(1)

    def dies_after_half(obj, f, *args, **kwargs):
        f.write(b"\x80\x02half a pickle")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", dies_after_half)
    with pytest.raises(KeyboardInterrupt):
        saver(2)
    assert saved_step(saver.run) == 1 and leftovers(saver.run) == []


def test_a_crash_between_the_two_renames_falls_back_to_the_previous_checkpoint(saver):
    last = saver(1)
    os.replace(last, old_path(last))  # the state after "old aside" and before "new in"
    assert saved_step(saver.run / "last") == 1  # found as .last.old
    saver(2)
    assert saved_step(saver.run / "last") == 2 and leftovers(saver.run) == []


@pytest.mark.parametrize("raised", ["OSError", "torch's RuntimeError"])
def test_disk_full_while_saving_fails_cleanly_and_keeps_the_previous_checkpoint(saver, monkeypatch, raised):
    saver(1)

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"\x80\x02partial")
        full = OSError(errno.ENOSPC, "No space left on device")
        if raised == "OSError":
            raise full
        try:
            raise full
        except OSError:  # what torch.save does when the file object's write fails: a RuntimeError on top
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534") from None

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(
        GptlabError, match=r"no space left on the disk while writing .*last; .*last keeps its previous version"
    ):
        saver(2)
    assert saved_step(saver.run) == 1 and leftovers(saver.run) == []


def test_keep_last_keeps_the_newest_n_checkpoints_as_hard_links(saver):
    for step in range(1, 6):
        keep_history(saver(step), step, keep_last=3)
    history = checkpoint.RunDir(saver.run).history
    assert sorted(p.name for p in history.iterdir()) == ["step-00000003", "step-00000004", "step-00000005"]
    assert [saved_step(p) for p in sorted(history.iterdir())] == [3, 4, 5]
    newest, last = history / "step-00000005" / "model.safetensors", saver.run / "last" / "model.safetensors"
    assert os.path.samefile(newest, last)  # no second copy on disk
    keep_history(saver(6), 6, keep_last=1)
    assert len(list(history.iterdir())) == 3  # keep_last 1 keeps no history (last/ alone) and touches none
