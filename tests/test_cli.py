import os
import subprocess
import sys

from gptlab.cli import main


def test_prepare_train_sample_from_the_command_line(corpus_file, tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["prepare", str(corpus_file), "--out", str(data)]) == 0
    assert "vocab" in capsys.readouterr().out
    args = [
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--preset",
        "tiny",
        "--max_iters",
        "20",
        "--eval_interval",
        "10",
        "--eval_iters",
        "2",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert (run / "best" / "model.safetensors").is_file()
    assert "val loss" in capsys.readouterr().out
    assert main(["sample", str(run), "--prompt", "The king", "--max-new-tokens", "40", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The king") and len(out.strip()) >= len("The king") + 30
    assert main(["sample", str(run), "--prompt", "The king", "--max-new-tokens", "40", "--seed", "1"]) == 0
    assert capsys.readouterr().out == out  # the seed reproduces the sample


def test_errors_are_one_line_with_exit_code_2(corpus_file, tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["prepare", str(tmp_path / "missing.txt"), "--out", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file or folder" in err and not data.exists()
    main(["prepare", str(corpus_file), "--out", str(data)])
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--preset", "tiny", "--n_head", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "divisible by n_head" in err and "Traceback" not in err


def test_unknown_flag_is_a_one_line_usage_error():
    proc = subprocess.run(
        [sys.executable, "-m", "gptlab", "train", "--n_layers", "3", "--data", "d", "--out", "o"],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "unrecognized arguments: --n-layers 3 (did you mean --n-layer?)" in proc.stderr
    assert "see `gptlab train --help`" in proc.stderr  # the verb's own help lists its keys
