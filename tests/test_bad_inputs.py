"""Every kind of bad input, through the command line: one stderr line naming the problem and what to
do, exit code 2, no traceback, and no file created, changed or removed anywhere the command could reach.

Each case builds its own bad input in a fresh case directory (from a shared prepared data directory
and a shared trained run), hashes both trees, runs the command and hashes them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from gptlab.atomic import write_checksums
from gptlab.cli import main
from gptlab.config import build_config
from gptlab.data.prepare import prepare
from gptlab.training.trainer import train

TINY = [
    "--preset",
    "tiny",
    "--max_iters",
    "2",
    "--eval_interval",
    "1",
    "--eval_iters",
    "1",
    "--sample_tokens",
    "0",
    "--device",
    "cpu",
]


@dataclass
class Workspace:
    corpus: Path  # a small valid text file
    data: Path  # a prepared data directory from it
    run: Path  # a trained tiny run on it
    case: Path  # this case's own directory, empty at the start


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    corpus = root / "corpus.txt"
    words = "the king and queen of denmark speak with a ghost upon the castle walls at night".split()
    corpus.write_text(
        "\n".join(" ".join(words[(i * 3 + j) % len(words)] for j in range(5 + i % 7)) for i in range(300)) + "\n"
    )
    prepare([str(corpus)], root / "data")
    cfg = build_config(
        "tiny", {"max_iters": 2, "eval_interval": 1, "eval_iters": 1, "sample_tokens": 0, "device": "cpu"}
    )
    train(cfg, root / "data", root / "run", progress=False)
    return root


@pytest.fixture
def ws(shared, tmp_path) -> Workspace:
    return Workspace(shared / "corpus.txt", shared / "data", shared / "run", tmp_path)


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and directory under root -> its content hash ('dir' for directories)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def copy_checkpoint(ws: Workspace) -> Path:
    ckpt = ws.case / "ckpt"
    shutil.copytree(ws.run / "best", ckpt)
    return ckpt


def prepared_from(ws: Workspace, text: str) -> Path:
    (ws.case / "small.txt").write_text(text)
    prepare([str(ws.case / "small.txt")], ws.case / "small")
    return ws.case / "small"


class EvilPickle:
    """Unpickling this runs code: it would create the file named in `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ---- the bad inputs: name -> (build the input, return argv), and words the one-line message must hold


def missing_input(ws):
    return ["prepare", str(ws.case / "nothing.txt"), "--out", str(ws.case / "out")]


def empty_input(ws):
    (ws.case / "empty.txt").write_text("   \n\n")
    return ["prepare", str(ws.case / "empty.txt"), "--out", str(ws.case / "out")]


def empty_folder(ws):
    (ws.case / "texts").mkdir()
    (ws.case / "texts" / "image.png").write_bytes(b"\x89PNG\r\n")
    return ["prepare", str(ws.case / "texts"), "--out", str(ws.case / "out")]


def binary_input(ws):
    # An ELF header and zero padding: every byte is valid UTF-8, but this is not text.
    (ws.case / "program.txt").write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 200 + b"main")
    return ["prepare", str(ws.case / "program.txt"), "--out", str(ws.case / "out")]


def non_utf8_input(ws):
    (ws.case / "latin1.txt").write_bytes("Où est le café ? À la gare.\n".encode("latin-1"))
    return ["prepare", str(ws.case / "latin1.txt"), "--out", str(ws.case / "out")]


def bad_val_fraction(ws):
    return ["prepare", str(ws.corpus), "--out", str(ws.case / "out"), "--val-fraction", "1.5"]


def unknown_tokenizer(ws):
    return ["prepare", str(ws.corpus), "--out", str(ws.case / "out"), "--tokenizer", "morse"]


def text_too_short_to_split(ws):
    (ws.case / "one.txt").write_text("a")
    return ["prepare", str(ws.case / "one.txt"), "--out", str(ws.case / "out")]


def prepare_over_existing_data(ws):
    shutil.copytree(ws.data, ws.case / "data")
    return ["prepare", str(ws.corpus), "--out", str(ws.case / "data")]


def not_a_data_directory(ws):
    (ws.case / "notes").mkdir()
    (ws.case / "notes" / "a.txt").write_text("hello")
    return ["train", "--data", str(ws.case / "notes"), "--out", str(ws.case / "run"), *TINY]


def corpus_shorter_than_block(ws):
    data = prepared_from(ws, "to be or not to be, that is the question\n" * 2)
    return ["train", "--data", str(data), "--out", str(ws.case / "run"), *TINY, "--batch_size", "1"]


def val_split_empty(ws):
    shutil.copytree(ws.data, ws.case / "data")
    for shard in json.loads((ws.case / "data" / "meta.json").read_text())["shards"]["val"]:
        (ws.case / "data" / shard).write_bytes(b"")
    return ["train", "--data", str(ws.case / "data"), "--out", str(ws.case / "run"), *TINY]


def batch_larger_than_data(ws):
    data = prepared_from(ws, "the quick brown fox jumps over the lazy dog. " * 10)  # val: ~45 tokens
    return [
        "train",
        "--data",
        str(data),
        "--out",
        str(ws.case / "run"),
        *TINY,
        "--block_size",
        "16",
        "--batch_size",
        "64",
    ]


def unknown_preset(ws):
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "run"), "--preset", "shakespear-char"]


def unknown_key_in_preset_file(ws):
    (ws.case / "mine.yaml").write_text("model:\n  n_layers: 3\n")
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "run"), "--preset", str(ws.case / "mine.yaml")]


def unknown_key_flag(ws):
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "run"), *TINY, "--n_layers", "3"]


def invalid_yaml_preset(ws):
    (ws.case / "broken.yaml").write_text("model: [n_layer: 3\n")
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "run"), "--preset", str(ws.case / "broken.yaml")]


def wrong_type(ws):
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "run"), *TINY, "--n_layer", "two"]


def wrong_type_fraction_for_int(ws):
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "run"), *TINY, "--batch_size", "2.5"]


def wrong_type_in_preset_file(ws):
    (ws.case / "mine.yaml").write_text("train:\n  learning_rate: fast\n")
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "run"), "--preset", str(ws.case / "mine.yaml")]


def out_of_range_dropout(ws):
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "run"), *TINY, "--dropout", "1.5"]


def out_of_range_layers(ws):
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "run"), *TINY, "--n_layer", "0"]


def not_finite_learning_rate(ws):
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "run"), *TINY, "--learning_rate", "nan"]


def bad_choice(ws):
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "run"), *TINY, "--attention", "fast"]


def n_embd_not_divisible(ws):
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "run"), *TINY, "--n_head", "3"]


def will_not_fit_in_memory(ws):
    return [
        "train",
        "--data",
        str(ws.data),
        "--out",
        str(ws.case / "run"),
        *TINY,
        "--n_layer",
        "96",
        "--n_head",
        "64",
        "--n_embd",
        "16384",
    ]


def train_over_existing_run(ws):
    shutil.copytree(ws.run, ws.case / "run")
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "run"), *TINY]


def overwrite_something_not_a_run(ws):
    (ws.case / "mine").mkdir()
    (ws.case / "mine" / "thesis.tex").write_text("\\begin{document}")
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "mine"), *TINY, "--overwrite"]


def unknown_device(ws):
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "run"), *TINY, "--device", "tpu"]


def cuda_without_cuda(ws):
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "run"), *TINY, "--device", "cuda"]


def sample_cuda_without_cuda(ws):
    return ["sample", str(ws.run), "--device", "cuda", "--max-new-tokens", "5"]


def missing_checkpoint(ws):
    return ["sample", str(ws.case / "no_such_run")]


def checkpoint_without_weights(ws):
    ckpt = copy_checkpoint(ws)
    (ckpt / "model.safetensors").unlink()
    return ["sample", str(ckpt), "--max-new-tokens", "5"]


def truncated_checkpoint(ws):
    ckpt = copy_checkpoint(ws)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return ["sample", str(ckpt), "--max-new-tokens", "5"]


def corrupt_checkpoint_weights(ws):
    ckpt = copy_checkpoint(ws)
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:-90] = b"\x7f" * 10  # a few float bytes deep in the data: the header still parses
    weights.write_bytes(bytes(data))
    return ["sample", str(ckpt), "--max-new-tokens", "5"]


def corrupt_checkpoint_header(ws):
    ckpt = copy_checkpoint(ws)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(b"\xff" * 16 + weights.read_bytes()[16:])
    return ["sample", str(ckpt), "--max-new-tokens", "5"]


def corrupt_checkpoint_config(ws):
    ckpt = copy_checkpoint(ws)
    (ckpt / "config.json").write_text('{"run": {"model": ')
    return ["sample", str(ckpt), "--max-new-tokens", "5"]


def checkpoint_of_another_config(ws):
    ckpt = copy_checkpoint(ws)
    info = json.loads((ckpt / "config.json").read_text())
    info["run"]["model"]["n_embd"] *= 2
    (ckpt / "config.json").write_text(json.dumps(info))
    write_checksums(ckpt)  # tampered on purpose: get past the checksum to the check under test
    return ["sample", str(ckpt), "--max-new-tokens", "5"]


def checkpoint_with_another_tokenizer(ws):
    ckpt = copy_checkpoint(ws)
    chars = json.loads((ckpt / "tokenizer.json").read_text())["chars"]
    (ckpt / "tokenizer.json").write_text(json.dumps({"kind": "char", "chars": chars + ["\u00e9", "\u00e8"]}))
    write_checksums(ckpt)  # tampered on purpose: get past the checksum to the check under test
    return ["sample", str(ckpt), "--max-new-tokens", "5"]


def pickle_instead_of_weights(ws):
    ckpt = copy_checkpoint(ws)
    (ckpt / "model.safetensors").write_bytes(pickle.dumps(EvilPickle(ws.case / "pwned"), protocol=2))
    write_checksums(ckpt)  # tampered on purpose: get past the checksum to the check under test
    return ["sample", str(ckpt), "--max-new-tokens", "5"]


def copy_run(ws: Workspace) -> Path:
    shutil.copytree(ws.run, ws.case / "run")
    return ws.case / "run"


def resume_not_a_run(ws):
    (ws.case / "notes").mkdir()
    (ws.case / "notes" / "a.txt").write_text("hello")
    return ["train", "--resume", str(ws.case / "notes")]


def resume_run_without_checkpoint(ws):
    run = copy_run(ws)
    shutil.rmtree(run / "last")
    return ["train", "--resume", str(run)]


def resume_corrupt_checkpoint(ws):
    run = copy_run(ws)
    state = run / "last" / "trainer.pt"
    state.write_bytes(state.read_bytes()[:-20] + b"\0" * 20)
    return ["train", "--resume", str(run), "--max_iters", "4"]


def resume_code_carrying_trainer_state(ws):
    run = copy_run(ws)
    (run / "last" / "trainer.pt").write_bytes(pickle.dumps(EvilPickle(ws.case / "pwned"), protocol=2))
    write_checksums(run / "last")  # tampered on purpose: get past the checksum to the check under test
    return ["train", "--resume", str(run), "--max_iters", "4"]


def resume_on_other_data(ws):
    run = copy_run(ws)
    data = prepared_from(ws, "an entirely different text, with other letters: xyzzy QUUX!\n" * 40)
    return ["train", "--resume", str(run), "--data", str(data), "--max_iters", "4"]


def resume_changing_the_model(ws):
    return ["train", "--resume", str(copy_run(ws)), "--n_layer", "4"]


def resume_finished_run(ws):
    return ["train", "--resume", str(copy_run(ws))]


def prompt_outside_vocabulary(ws):
    return ["sample", str(ws.run), "--prompt", "the king \u2603", "--max-new-tokens", "5"]


def prompt_longer_than_context(ws):
    return ["sample", str(ws.run), "--prompt", "the king and the ghost " * 4, "--max-new-tokens", "5"]  # 96 chars > 32


def negative_token_count(ws):
    return ["sample", str(ws.run), "--max-new-tokens", "-1"]


CASES = {
    # name: (build, words the message holds)
    "missing input": (missing_input, "no such file"),
    "empty input": (empty_input, "no text"),
    "folder without text files": (empty_folder, "no .txt or .md"),
    "binary input": (binary_input, "binary"),
    "non-UTF-8 input": (non_utf8_input, "not valid UTF-8"),
    "val fraction out of range": (bad_val_fraction, "val_fraction"),
    "unknown tokenizer": (unknown_tokenizer, "invalid choice: 'morse'"),
    "val split empty (text too short to split)": (text_too_short_to_split, "too short"),
    "prepare over an existing data directory": (prepare_over_existing_data, "--overwrite"),
    "not a data directory": (not_a_data_directory, "gptlab prepare"),
    "corpus shorter than block_size + 1": (corpus_shorter_than_block, "fewer than block_size + 1"),
    "token files emptied after prepare": (val_split_empty, "were cut or changed after `gptlab prepare`"),
    "batch larger than the data": (batch_larger_than_data, "--batch_size"),
    "unknown preset": (unknown_preset, "unknown preset"),
    "unknown config key in a preset file": (unknown_key_in_preset_file, "unknown config key 'n_layers'"),
    "unknown config key flag": (unknown_key_flag, "unrecognized arguments: --n_layers"),
    "preset file not YAML": (invalid_yaml_preset, "not valid YAML"),
    "wrong type": (wrong_type, "n_layer expects int"),
    "wrong type: fraction for an int": (wrong_type_fraction_for_int, "batch_size expects int"),
    "wrong type in a preset file": (wrong_type_in_preset_file, "learning_rate expects float"),
    "out of range: dropout": (out_of_range_dropout, "dropout must be in [0, 1)"),
    "out of range: n_layer": (out_of_range_layers, "n_layer must be at least 1"),
    "out of range: NaN learning rate": (not_finite_learning_rate, "learning_rate expects a finite number"),
    "not one of the choices": (bad_choice, "attention must be one of"),
    "n_embd not divisible by n_head": (n_embd_not_divisible, "divisible by n_head"),
    "configuration too big for memory": (will_not_fit_in_memory, "does not fit"),
    "output directory holds another run": (train_over_existing_run, "--overwrite to replace that run, or --resume it"),
    "--overwrite on a directory that is not a run": (overwrite_something_not_a_run, "not a gptlab run"),
    "unknown device": (unknown_device, "unknown device"),
    "train --device cuda without CUDA": (cuda_without_cuda, "no usable CUDA"),
    "sample --device cuda without CUDA": (sample_cuda_without_cuda, "no usable CUDA"),
    "missing checkpoint": (missing_checkpoint, "no such checkpoint"),
    "checkpoint without weights": (checkpoint_without_weights, "model.safetensors"),
    "truncated checkpoint": (truncated_checkpoint, "truncated or corrupt"),
    "corrupt checkpoint weights": (corrupt_checkpoint_weights, "SHA-256"),
    "corrupt checkpoint header": (corrupt_checkpoint_header, "truncated or corrupt"),
    "corrupt checkpoint config": (corrupt_checkpoint_config, "corrupt"),
    "checkpoint from another config": (checkpoint_of_another_config, "does not match"),
    "checkpoint with another tokenizer": (checkpoint_with_another_tokenizer, "belongs to another run"),
    "pickle that would execute code": (pickle_instead_of_weights, "truncated or corrupt"),
    "--resume a directory that is not a run": (resume_not_a_run, "not a gptlab run"),
    "--resume a run without a checkpoint": (resume_run_without_checkpoint, "no resumable checkpoint"),
    "--resume a corrupt checkpoint": (resume_corrupt_checkpoint, "truncated or corrupt"),
    "--resume a trainer state that would execute code": (resume_code_carrying_trainer_state, "was refused"),
    "--resume on data with another tokenizer": (resume_on_other_data, "another tokenizer"),
    "--resume changing the model": (resume_changing_the_model, "changes the model"),
    "--resume a finished run": (resume_finished_run, "already finished"),
    "prompt outside the char vocabulary": (prompt_outside_vocabulary, "not in this model's vocabulary"),
    "prompt longer than the context": (prompt_longer_than_context, "longer than the model's context"),
    "negative token count": (negative_token_count, "--max-new-tokens"),
}
NEEDS_NO_CUDA = {"train --device cuda without CUDA", "sample --device cuda without CUDA"}


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's usage errors exit from inside parse_args
        return e.code


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_exit_2_and_changes_no_file(name, ws, capsys):
    if name in NEEDS_NO_CUDA and torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so --device cuda is not bad input here")
    build, words = CASES[name]
    argv = build(ws)
    before = tree_digest(ws.case), tree_digest(ws.data.parent)
    capsys.readouterr()
    code = run_main(argv)
    out, err = capsys.readouterr()
    assert code == 2, f"exit code {code}; stderr: {err}"
    assert err.count("\n") == 1 and err.endswith("\n"), f"not one line: {err!r}"
    assert err.startswith("gptlab") and words in err, err
    assert "Traceback" not in err and out == ""
    assert (tree_digest(ws.case), tree_digest(ws.data.parent)) == before, "a file was created, changed or removed"
    assert not (ws.case / "pwned").exists()


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "gptlab", *argv], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("name", ["missing input", "non-UTF-8 input", "corrupt checkpoint weights"])
def test_bad_input_in_a_real_process_exits_2_without_traceback(name, ws):
    build, words = CASES[name]
    argv = build(ws)
    before = tree_digest(ws.case)
    proc = run_cli(*argv)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and words in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == "" and tree_digest(ws.case) == before


def test_debug_flag_shows_the_traceback(ws):
    argv = missing_input(ws)
    proc = run_cli("--debug", *argv)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "GptlabError" in proc.stderr
    assert "no such file" in proc.stderr.splitlines()[-1]
