"""Issue 13 beyond the bad-input table: what needs a patched model, a full disk, a signal, a pipe or a moved
directory. Each case ends in one line (or in success) and leaves every file as it was."""

from __future__ import annotations

import builtins
import errno
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from gptlab.checkpoint import load_checkpoint
from gptlab.cli import main
from gptlab.config import build_config
from gptlab.data.prepare import prepare
from gptlab.errors import GptlabError
from gptlab.generation import load
from gptlab.training import memory, trainer
from gptlab.training.trainer import Trainer, resume, train
from tests.test_bad_inputs import TINY, tree_digest


@pytest.fixture
def prepared(corpus_file, tmp_path):
    prepare([str(corpus_file)], tmp_path / "data")
    return tmp_path / "data"


def tiny(**overrides):
    base = {"max_iters": 8, "eval_interval": 100, "eval_iters": 1, "log_interval": 1, "sample_tokens": 0}
    return build_config("tiny", {**base, "device": "cpu", **overrides})


def poison_after_step(monkeypatch, step: int) -> None:
    """After the update of `step`, set every weight to 1e30: finite, but the loss it gives is not."""
    train_step = Trainer.train_step

    def diverging(self):
        out = train_step(self)
        if self.step == step:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(1e30)
        return out

    monkeypatch.setattr(Trainer, "train_step", diverging)


@pytest.mark.parametrize("mode", ["stop", "skip"])
@pytest.mark.parametrize("when", ["checkpoint", "evaluation"])
def test_a_diverged_update_is_never_saved_nor_named_good(prepared, tmp_path, monkeypatch, mode, when):
    run = tmp_path / "run"
    poison_after_step(monkeypatch, 4)
    cfg = (
        tiny(checkpoint_interval=1, nonfinite_loss=mode)
        if when == "checkpoint"
        else tiny(eval_interval=4, sample_tokens=20, nonfinite_loss=mode)  # the text sample must not crash either
    )
    good = 3 if when == "checkpoint" else 0
    with pytest.raises(
        GptlabError, match=rf"went bad by step 4 .*last good checkpoint is {run / 'last'} \(step {good}\)"
    ):
        train(cfg, prepared, run, progress=False)
    ckpt = load_checkpoint(run / "last")
    assert ckpt.info["step"] == good and all(torch.isfinite(p).all() for p in ckpt.model.parameters())
    assert len(load(run / "last", "cpu").generate("the", max_new_tokens=5, seed=0)) > 0  # it samples


def test_skip_stops_when_the_weights_themselves_went_bad(prepared, tmp_path, monkeypatch):
    """--nonfinite_loss skip skips a bad batch; when every loss is bad because the weights are, it stops at once."""
    run = tmp_path / "run"
    poison_after_step(monkeypatch, 2)
    with pytest.raises(GptlabError, match=r"went bad by step 2 .*\(step 0\)"):
        train(tiny(nonfinite_loss="skip"), prepared, run, progress=False)


def test_a_moved_run_resumes_and_evaluates_and_data_can_be_given(corpus_file, tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    prepare([str(corpus_file)], Path("data"))
    train(tiny(max_iters=2, eval_interval=2), Path("data"), Path("runs/a"), progress=False)
    shutil.move(project, tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    moved = tmp_path / "moved"
    assert resume(moved / "runs" / "a", {"max_iters": 3}, progress=False).steps == 3
    assert main(["eval", str(moved / "runs" / "a"), "--max-tokens", "100"]) == 0
    shutil.move(moved / "data", tmp_path / "elsewhere")  # the data alone moved: say where it is
    assert main(["train", "--resume", str(moved / "runs" / "a"), "--max_iters", "4"]) == 2
    assert "is gone (moved or deleted); pass --data DIR" in capsys.readouterr().err
    args = ["train", "--resume", str(moved / "runs" / "a"), "--max_iters", "4", "--data", str(tmp_path / "elsewhere")]
    assert main(args) == 0


def test_resume_with_a_larger_batch_is_checked_against_memory(prepared, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    train(tiny(max_iters=2, eval_interval=2), prepared, run, progress=False)
    cfg = tiny()
    cfg.model.vocab_size = 100
    need = memory.training_memory(cfg, 8)["total"]
    monkeypatch.setattr(memory, "available_memory", lambda device: 4 * need)  # batch 8 fits, batch 1000 does not
    before = tree_digest(tmp_path)
    assert main(["train", "--resume", str(run), "--max_iters", "4", "--batch_size", "1000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit" in err and tree_digest(tmp_path) == before


def test_a_model_that_fails_to_allocate_leaves_nothing(prepared, tmp_path, monkeypatch, capsys):
    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(trainer, "build_optimizers", no_memory)
    before = tree_digest(tmp_path)
    out = tmp_path / "new" / "deeper" / "run"
    assert main(["train", "--data", str(prepared), "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit in the memory" in err
    assert tree_digest(tmp_path) == before  # no run directory, no parent folders, no lock file


def test_a_start_that_fails_puts_the_replaced_run_back(prepared, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny(max_iters=2, eval_interval=2), prepared, run, progress=False)
    before = tree_digest(tmp_path)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer, "save_checkpoint", full_disk)
    with pytest.raises(OSError):
        train(tiny(seed=7), prepared, run, overwrite=True, progress=False)
    assert tree_digest(tmp_path) == before


def test_loading_a_model_larger_than_memory_is_refused_before_it_is_built(tiny_run, monkeypatch):
    from gptlab import checkpoint

    monkeypatch.setattr(checkpoint, "available_memory", lambda device: 1000)
    monkeypatch.setattr(checkpoint, "build_model", lambda cfg: pytest.fail("the model was built"))
    with pytest.raises(GptlabError, match=r"needs 0.0 GiB but 0.0 GiB is free"):
        load_checkpoint(tiny_run)


def test_a_closed_pipe_ends_sample_quietly(tiny_run):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "gptlab", "sample", str(tiny_run), "--max-new-tokens", "5000", "--seed", "0"]
    sample = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    head = subprocess.run(["head", "-c", "10"], stdin=sample.stdout, capture_output=True)
    sample.stdout.close()  # head has gone: the next write meets a closed pipe
    err = sample.stderr.read().decode()
    sample.wait(60)
    assert len(head.stdout) == 10
    assert sample.returncode == 128 + signal.SIGPIPE and err == ""


def test_eval_reads_a_pipe(tiny_run, tmp_path, capsys):
    fifo = tmp_path / "text"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("the king and the queen of denmark\n" * 5))
    writer.start()
    assert main(["eval", str(tiny_run), "--text", str(fifo)]) == 0
    writer.join(10)
    assert f"{fifo}: " in capsys.readouterr().out


def test_an_unreadable_file_is_an_error_not_left_out(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "book"
    folder.mkdir()
    for i in range(3):
        (folder / f"chapter{i}.txt").write_text(f"chapter {i} of the book, with some words in it\n" * 20)
    locked = folder / "chapter1.txt"
    locked.chmod(0)
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):  # root reads a chmod 000 file: refuse it as the kernel would
        if Path(os.fsdecode(file)) == locked if isinstance(file, (str, bytes, os.PathLike)) else False:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    before = tree_digest(tmp_path)
    for source in (folder, locked):
        assert main(["prepare", str(source), "--out", str(tmp_path / "data")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"cannot read {locked} (Permission denied)" in err, err
    assert tree_digest(tmp_path) == before


def with_file_size_limit(argv: list[str], limit: int, err: str) -> None:
    """In a child process: run the CLI with files capped at `limit` bytes (write() then fails with EFBIG, as
    on a full disk; Python ignores SIGXFSZ), stderr to `err`; exit with the CLI's code."""
    import resource

    torch.set_num_threads(1)
    fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    os._exit(main(argv))


@pytest.fixture(scope="module")
def forkserver():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch._dynamo", "gptlab.training.trainer", "gptlab.cli", __name__])
    return ctx


def test_a_full_disk_keeps_the_previous_data_and_run(forkserver, corpus_file, tmp_path):
    data, run, err = tmp_path / "data", tmp_path / "run", tmp_path.parent / f"{tmp_path.name}.err"
    prepare([str(corpus_file)], data)
    train(tiny(max_iters=2, eval_interval=2), data, run, progress=False)
    before = tree_digest(tmp_path)
    for argv, kept in (
        (
            ["prepare", str(corpus_file), "--out", str(data), "--overwrite", "--seed", "3", "--tokenizer", "word"],
            f"while writing {data}; {data} keeps its previous version",
        ),
        (
            ["train", "--data", str(data), "--out", str(run), *TINY, "--overwrite", "--seed", "3"],
            f"while writing {run / 'last'}; {run / 'last'} was not written",  # and the replaced run is put back
        ),
    ):
        proc = forkserver.Process(target=with_file_size_limit, args=(argv, 4000, str(err)))
        proc.start()
        proc.join(120)
        message = err.read_text()
        assert proc.exitcode == 2 and message.count("\n") == 1 and "Traceback" not in message, message
        assert "the file size limit was reached" in message and kept in message, message
        assert tree_digest(tmp_path) == before, argv[0]


def prepare_until_stopped(source: str, out: str, err: str) -> None:
    from gptlab.data import prepare as prepare_module

    prepare_module.POOL_MIN_CHARS = 0  # two worker processes even for this corpus
    prepare_module.CHUNK_CHARS = 4096
    fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    os._exit(main(["prepare", source, "--out", out, "--workers", "2"]))


def test_sigterm_during_prepare_cleans_up_like_ctrl_c(forkserver, tmp_path):
    source, out, err = tmp_path / "big.txt", tmp_path / "data", tmp_path.parent / f"{tmp_path.name}.err"
    line = "the king and queen of denmark speak with a ghost upon the castle walls at night\n"
    source.write_text(line * 40_000)  # 3 MB: several seconds of encoding in 4 KB chunks
    proc = forkserver.Process(target=prepare_until_stopped, args=(str(source), str(out), str(err)))
    proc.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(tmp_path.glob(".data.*.tmp/train.bin")):
        time.sleep(0.01)  # the workers are encoding
    assert any(tmp_path.glob(".data.*.tmp/train.bin")), "prepare never started writing"
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(60)
    message = err.read_text()
    assert proc.exitcode == 128 + signal.SIGTERM and "Traceback" not in message, message
    assert message.strip().splitlines()[-1] == "gptlab prepare: stopped by SIGTERM"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt"]  # no temporary directory, no lock


def test_few_documents_split_by_position_and_say_so(tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    for i, n in enumerate((30, 10, 5)):
        (notes / f"note{i}.txt").write_text(f"note {i}: the king and the queen of denmark\n" * n)
    assert main(["prepare", str(notes), "--out", str(tmp_path / "data"), "--val-fraction", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "split by position" in out and "3 documents are too few" in out and "the last 10% of each" in out


def test_a_best_checkpoint_that_is_the_untrained_model_is_named(prepared, tmp_path, monkeypatch, capsys):
    estimate = trainer.estimate_loss
    monkeypatch.setattr(  # the val loss only rises: best/ stays the step-0 model
        trainer, "estimate_loss", lambda model, *a, **k: {**estimate(model, *a, **k), "val": 5.0 + len(calls)}
    )
    calls = []
    monkeypatch.setattr(Trainer, "save_last", _counting(Trainer.save_last, calls))
    run = tmp_path / "run"
    train(tiny(max_iters=4, eval_interval=2), prepared, run, progress=False)
    assert f"note: {run / 'best'} is the step-0 model (untrained weights)" in capsys.readouterr().out
    load(run, "cpu")
    assert f"note: {run / 'best'} is the step-0 model" in capsys.readouterr().err


def _counting(method, calls):
    def wrapped(self, *args, **kwargs):
        calls.append(1)
        return method(self, *args, **kwargs)

    return wrapped


def test_report_into_a_missing_folder_creates_it(tiny_run, tmp_path, capsys):
    out = tmp_path / "reports" / "new" / "tiny.md"
    assert main(["report", str(tiny_run), "--out", str(out), "--no-eval"]) == 0
    assert out.read_text().startswith("# Run report") and (out.parent / "tiny_loss.png").is_file()


def test_save_in_the_console_never_overwrites_a_checkpoint_file(char_textgen, tiny_run, tmp_path):
    import io

    from gptlab.generation.console import Console

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_run / "best", ckpt)
    before = tree_digest(ckpt)
    out = io.StringIO()
    console = Console(char_textgen, lambda prompt: "", out)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):  # the last one: listed in checksums.json
        console.handle(f"/save {ckpt / name}")
    assert out.getvalue().count("belongs to a gptlab directory; refusing to overwrite it") == 3
    assert tree_digest(ckpt) == before
