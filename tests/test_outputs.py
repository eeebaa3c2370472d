"""Where gptlab writes (issue 13: data loss): the overwrite guard, the directory lock held by another real
process, what killed processes leave behind, and the atomic swap every directory goes through."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptlab import atomic
from gptlab.atomic import atomic_directory, old_path, restore_previous
from gptlab.checkpoint import RUN_OUTPUT
from gptlab.cli import main
from gptlab.data.format import DATA_OUTPUT
from gptlab.data.prepare import prepare
from gptlab.errors import GptlabError
from gptlab.outputs import OutputKind, check_output_dir, claim_output
from tests.test_bad_inputs import TINY, tree_digest

ANYTHING = OutputKind("anything", "it", lambda path: True)  # a kind that recognises every directory


@pytest.mark.parametrize("where", ["root", "home"])
def test_the_root_and_home_directories_are_never_replaced(where):
    path = Path("/") if where == "root" else Path.home()
    with pytest.raises(GptlabError, match="never replaces"):
        check_output_dir(path, ANYTHING, overwrite=True)  # raises before anything is touched


@pytest.mark.parametrize("verb", ["prepare", "train", "export-hf"])
def test_the_current_directory_and_its_parents_are_never_replaced(
    verb, tiny_run, corpus_file, tmp_path, monkeypatch, capsys
):
    here = tmp_path / "project" / "work"
    here.mkdir(parents=True)
    prepare([str(corpus_file)], here / "data")
    (here / "notes.txt").write_text("mine\n")
    monkeypatch.chdir(here)
    before = tree_digest(tmp_path)
    for out in (".", "..", str(here)):
        argv = {
            "prepare": ["prepare", str(corpus_file), "--out", out, "--overwrite"],
            "train": ["train", "--data", "data", "--out", out, *TINY, "--overwrite"],
            "export-hf": ["export-hf", str(tiny_run), out, "--overwrite"],
        }[verb]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "never replaces" in err, err
    assert tree_digest(tmp_path) == before


def hold_lock(directory: Path) -> subprocess.Popen:
    """Another real process that claims `directory` (as a running gptlab would) until its stdin closes."""
    code = (
        "import sys; from gptlab.outputs import DirectoryLock; lock = DirectoryLock(sys.argv[1]); lock.acquire(); "
        "print('locked', flush=True); sys.stdin.read(); lock.release()"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_training_in_another_process_locks_its_run_directory(corpus_file, tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    prepare([str(corpus_file)], data)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    args = ["--preset", "tiny", "--max_iters", "100000", "--eval_interval", "100000", "--device", "cpu"]
    first = subprocess.Popen(
        [sys.executable, "-m", "gptlab", "train", "--data", str(data), "--out", str(run), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "last").is_dir() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (run / "last").is_dir(), "the first training did not start"
        second = [
            ["train", "--data", str(data), "--out", str(run), *args, "--overwrite"],
            ["train", "--resume", str(run), "--max_iters", "200000"],
        ]
        for argv in second:
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"{run} is in use by another gptlab process (pid {first.pid}" in err, err
        assert first.poll() is None  # the first one trains on, undisturbed
    finally:
        first.terminate()
        _, err = first.communicate(timeout=60)
    assert first.returncode == 143 and "stopped by SIGTERM" in err
    assert not (tmp_path / ".run.lock").exists()  # released


def test_prepare_and_export_refuse_a_directory_another_process_writes(corpus_file, tmp_path, capsys):
    data = tmp_path / "data"
    prepare([str(corpus_file)], data)
    before = tree_digest(tmp_path)
    holder = hold_lock(data)
    try:
        assert main(["prepare", str(corpus_file), "--out", str(data), "--overwrite"]) == 2
        assert "in use by another gptlab process" in capsys.readouterr().err
        assert tree_digest(tmp_path) == {**before, ".data.lock": tree_digest(tmp_path)[".data.lock"]}
    finally:
        holder.communicate("")
    assert not (tmp_path / ".data.lock").exists()
    holder = hold_lock(tmp_path / "hf")
    try:
        with pytest.raises(GptlabError, match="in use by another gptlab process"):
            with claim_output(tmp_path / "hf", ANYTHING):
                pass
    finally:
        holder.communicate("")


def test_leftovers_of_killed_processes_are_removed_with_a_note(corpus_file, tmp_path, capsys):
    data = tmp_path / "data"
    prepare([str(corpus_file)], data)
    stale = [tmp_path / f".{name}" for name in ("data.k1ll3d00.tmp", "data.abcdefgh.trash", "data.0a1b2c3d")]
    stale += [tmp_path / "..data.old.abcdefgh.trash", tmp_path / "..data.0a1b2c3d.tmp.abcdefgh.trash"]
    for d in stale:
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "train.bin").write_bytes(b"\0" * 100)
    (tmp_path / ".other.k1ll3d00.tmp").mkdir()  # another output's: not ours to touch
    prepare([str(corpus_file)], data, overwrite=True)
    err = capsys.readouterr().err
    assert all(f"removed {d}" in err for d in stale) and "interrupted gptlab process" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.k1ll3d00.tmp", "corpus.txt", "data"]


def test_a_replacement_killed_between_its_two_renames_is_put_back(corpus_file, tmp_path, capsys):
    """Where the system cannot swap two directories in one step: the old one waits at .NAME.old, and the next
    claim puts it back (the state a kill between 'old aside' and 'new in' leaves)."""
    data = tmp_path / "data"
    prepare([str(corpus_file)], data)
    before = tree_digest(data)
    os.replace(data, old_path(data))
    with claim_output(data, DATA_OUTPUT):
        assert tree_digest(data) == before and not old_path(data).exists()
    assert f"put back {data} from .data.old" in capsys.readouterr().err


@pytest.mark.parametrize("swap", [True, False], ids=["exchange", "two renames"])
def test_atomic_directory_replaces_whole_and_restores(tmp_path, monkeypatch, swap):
    if not swap:
        monkeypatch.setattr(atomic, "_SWAP", None)
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("old")
    with atomic_directory(final, keep_previous=True) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (final / "a.txt").read_text() == "new" and (old_path(final) / "a.txt").read_text() == "old"
    restore_previous(final)
    assert (final / "a.txt").read_text() == "old" and not old_path(final).exists()
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise KeyboardInterrupt
    assert (final / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_every_file_is_written_0644_like_the_rest(tmp_path):
    """safetensors writes its files 0600; every file of every directory gptlab writes gets the usual mode."""
    import torch
    from safetensors.torch import save_file

    umask = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "ckpt") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
            (tmp / "config.json").write_text("{}")
    finally:
        os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ckpt").iterdir()}
    assert modes == {"model.safetensors": 0o644, "config.json": 0o644, "checksums.json": 0o644}
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o755


def test_a_run_is_recognised_only_by_a_run_config(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text('{"model_type": "gpt2"}')  # a Hugging Face config, not a run
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text('{"run": {"model": {}}}')
    assert not RUN_OUTPUT.recognise(tmp_path / "a") and RUN_OUTPUT.recognise(tmp_path / "b")
