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
            if not os.path.isfile(path):  # a FIFO (reading it would wait for a writer), a broken link
                out[os.path.relpath(path, root)] = "special"
                continue
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


# ---- issue 13: overwrites that would have lost data (the digest check proves every file is still there, byte for
# byte), paths that are files or folders where the other belongs, files that are not what meta.json says


def prepare_over_its_own_source_folder(ws):
    notes = ws.case / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("my notes, which are precious\n" * 20)
    return ["prepare", str(notes), "--out", str(notes), "--overwrite"]


def prepare_over_a_project_folder(ws):
    (ws.case / "project").mkdir()
    (ws.case / "project" / "main.py").write_text("print('hello')\n")
    return ["prepare", str(ws.corpus), "--out", str(ws.case / "project"), "--overwrite"]


def prepare_over_the_folder_holding_its_source(ws):
    shutil.copytree(ws.data, ws.case / "data")  # a data directory the user also keeps a source in
    (ws.case / "data" / "source.txt").write_text(ws.corpus.read_text())
    return ["prepare", str(ws.case / "data" / "source.txt"), "--out", str(ws.case / "data"), "--overwrite"]


def import_over_its_own_source(ws):
    hf = ws.case / "hf"
    assert main(["export-hf", str(ws.run), str(hf)]) == 0
    return ["import-gpt2", str(hf), "--out", str(hf), "--overwrite"]


def export_over_a_run(ws):
    run = copy_run(ws)
    return ["export-hf", str(ws.run), str(run), "--overwrite"]


def export_over_its_own_run(ws):
    run = copy_run(ws)
    return ["export-hf", str(run), str(run), "--overwrite"]


def train_over_its_data(ws):
    shutil.copytree(ws.data, ws.case / "data")
    return ["train", "--data", str(ws.case / "data"), "--out", str(ws.case / "data"), *TINY, "--overwrite"]


def train_over_a_run_holding_its_data(ws):
    run = copy_run(ws)
    shutil.copytree(ws.data, run / "data")
    return ["train", "--data", str(run / "data"), "--out", str(run), *TINY, "--overwrite"]


def train_over_a_run_holding_its_preset(ws):
    run = copy_run(ws)
    (run / "mine.yaml").write_text("model:\n  n_layer: 1\n")
    return [
        "train",
        "--data",
        str(ws.data),
        "--out",
        str(run),
        *TINY,
        "--preset",
        str(run / "mine.yaml"),
        "--overwrite",
    ]


def train_out_is_a_file(ws):
    (ws.case / "run").write_text("not a directory")
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "run"), *TINY]


def prepare_out_is_a_file(ws):
    (ws.case / "out").write_text("not a directory")
    return ["prepare", str(ws.corpus), "--out", str(ws.case / "out"), "--overwrite"]


def out_under_a_file(ws):
    (ws.case / "file").write_text("not a directory")
    return ["prepare", str(ws.corpus), "--out", str(ws.case / "file" / "data")]


def out_is_a_symlink(ws):
    shutil.copytree(ws.data, ws.case / "real")
    (ws.case / "link").symlink_to(ws.case / "real")
    return ["prepare", str(ws.corpus), "--out", str(ws.case / "link"), "--overwrite"]


def out_parent_not_writable(ws):
    if os.access("/sys", os.W_OK) or not os.path.isdir("/sys"):  # root writes anywhere but in /sys
        return ["prepare", str(ws.corpus), "--out", "/sys/gptlab-test/data"]
    (ws.case / "ro").mkdir(mode=0o555)
    return ["prepare", str(ws.corpus), "--out", str(ws.case / "ro" / "data")]


def non_utf8_file_name(ws):
    folder = ws.case / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("plain text\n" * 20)
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.txt"), "w") as f:
        f.write("latin-1 named\n" * 20)
    return ["prepare", str(folder), "--out", str(ws.case / "out")]


def non_utf8_out_name(ws):
    return ["prepare", str(ws.corpus), "--out", os.fsdecode(os.fsencode(ws.case) + b"/caf\xe9")]


def fifo_source(ws):
    os.mkfifo(ws.case / "pipe")
    return ["prepare", str(ws.case / "pipe"), "--out", str(ws.case / "out")]


def too_little_text_to_train(ws):
    (ws.case / "abc.txt").write_text("abc")
    return ["prepare", str(ws.case / "abc.txt"), "--out", str(ws.case / "out")]


def data_with_ids_outside_the_vocabulary(ws):
    shutil.copytree(ws.data, ws.case / "data")
    val = ws.case / "data" / "val.bin"
    ids = bytearray(val.read_bytes())
    ids[10:12] = (60000).to_bytes(2, "little")
    val.write_bytes(bytes(ids))
    write_checksums(ws.case / "data")  # a file that still matches its checksum: the id check itself must catch it
    return ["train", "--data", str(ws.case / "data"), "--out", str(ws.case / "run"), *TINY]


def cut_data(ws) -> Path:
    shutil.copytree(ws.data, ws.case / "data")
    train_bin = ws.case / "data" / "train.bin"
    train_bin.write_bytes(train_bin.read_bytes()[:1000])
    return ws.case / "data"


def resume_on_cut_token_files(ws):
    run, data = copy_run(ws), cut_data(ws)
    return ["train", "--resume", str(run), "--data", str(data), "--max_iters", "4"]


def eval_on_cut_token_files(ws):
    return ["eval", str(ws.run), "--data", str(cut_data(ws)), "--split", "train"]


def eval_on_data_with_another_tokenizer_of_the_same_size(ws):
    text = ws.corpus.read_text()
    chars = sorted(set(text) - {"\n"})
    swap = str.maketrans(chars[-1], "\u00e9")  # one character replaced: the vocabulary size stays, the vocabulary not
    (ws.case / "other.txt").write_text(text.translate(swap))
    prepare([str(ws.case / "other.txt")], ws.case / "other")
    return ["eval", str(ws.run), "--data", str(ws.case / "other")]


def eval_text_not_utf8(ws):
    (ws.case / "latin1.txt").write_bytes("Où est le café ?\n".encode("latin-1"))
    return ["eval", str(ws.run), "--text", str(ws.case / "latin1.txt")]


def resume_run_with_corrupt_config(ws):
    run = copy_run(ws)
    (run / "config.json").write_text('{"run": {"model"')
    return ["train", "--resume", str(run), "--max_iters", "4"]


def overwrite_run_with_corrupt_config(ws):
    run = copy_run(ws)
    (run / "config.json").write_text('{"run": {"model"')
    return ["train", "--data", str(ws.data), "--out", str(run), *TINY, "--overwrite"]


def init_from_without_its_tokenizer(ws):
    ckpt = copy_checkpoint(ws)
    (ckpt / "tokenizer.json").unlink()
    return ["train", "--data", str(ws.data), "--out", str(ws.case / "run"), *TINY, "--init-from", str(ckpt)]


def inspect_out_is_a_file(ws):
    (ws.case / "pictures").write_text("not a folder")
    return ["inspect", str(ws.run), "--out", str(ws.case / "pictures"), "--only", "loss"]


def inspect_top_zero(ws):
    return ["inspect", str(ws.run), "--out", str(ws.case / "pictures"), "--only", "next-token", "--top", "0"]


def report_out_is_a_folder(ws):
    (ws.case / "report").mkdir()
    return ["report", str(ws.run), "--out", str(ws.case / "report"), "--no-eval"]


def report_over_the_runs_config(ws):
    run = copy_run(ws)
    return ["report", str(run), "--out", str(run / "config.json"), "--no-eval"]


def report_on_corrupt_metrics(ws):
    run = copy_run(ws)
    (run / "metrics.jsonl").write_text('{"kind": "eval", "step": 0}\n\x00\x01garbage\n{"kind": "eval", "step": 1}\n')
    return ["report", str(run), "--no-eval"]


def report_on_corrupt_config(ws):
    run = copy_run(ws)
    (run / "config.json").write_text("[1, 2")
    return ["report", str(run), "--no-eval"]


def hf_dir_from_run(ws) -> Path:
    hf = ws.case / "hf"
    assert main(["export-hf", str(ws.run), str(hf)]) == 0
    return hf


def import_config_holding_a_list(ws):
    hf = hf_dir_from_run(ws)
    (hf / "config.json").write_text("[1, 2, 3]")
    return ["import-gpt2", str(hf), "--out", str(ws.case / "imported")]


def import_config_larger_than_its_weights(ws):
    hf = hf_dir_from_run(ws)
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "n_embd": 2**16, "n_head": 2**10}))  # 50 GB if built
    return ["import-gpt2", str(hf), "--out", str(ws.case / "imported")]


def checkpoint_config_larger_than_its_weights(ws):
    ckpt = copy_checkpoint(ws)
    info = json.loads((ckpt / "config.json").read_text())
    info["run"]["model"].update(n_embd=2**16, n_head=2**10, n_layer=64)  # about 13 TB if it were built
    (ckpt / "config.json").write_text(json.dumps(info))
    write_checksums(ckpt)
    return ["sample", str(ckpt), "--max-new-tokens", "5"]


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
    "batch larger than the data": (batch_larger_than_data, "--batch-size"),
    "unknown preset": (unknown_preset, "unknown preset"),
    "unknown config key in a preset file": (unknown_key_in_preset_file, "unknown config key 'n_layers'"),
    "unknown config key flag": (unknown_key_flag, "unrecognized arguments: --n-layers"),
    "preset file not YAML": (invalid_yaml_preset, "not valid YAML"),
    "wrong type": (wrong_type, "n_layer expects int"),
    "wrong type: fraction for an int": (wrong_type_fraction_for_int, "batch_size expects int"),
    "wrong type in a preset file": (wrong_type_in_preset_file, "learning_rate expects float"),
    "out of range: dropout": (out_of_range_dropout, "dropout must be in [0, 1)"),
    "out of range: n_layer": (out_of_range_layers, "n_layer must be in [1, 1024]"),
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
    # issue 13: data loss
    "prepare --overwrite of its own source folder": (prepare_over_its_own_source_folder, "an input of this command"),
    "prepare --overwrite of a project folder": (prepare_over_a_project_folder, "is not a gptlab data directory"),
    "prepare --overwrite of a folder holding its source": (
        prepare_over_the_folder_holding_its_source,
        "an input of this command",
    ),
    "import-gpt2 --overwrite of its own source": (import_over_its_own_source, "an input of this command"),
    "export-hf --overwrite of a run": (export_over_a_run, "is not a Hugging Face export"),
    "export-hf --overwrite of the run it reads": (export_over_its_own_run, "an input of this command"),
    "train --overwrite of its data": (train_over_its_data, "an input of this command"),
    "train --overwrite of a run holding its data": (train_over_a_run_holding_its_data, "an input of this command"),
    "train --overwrite of a run holding its preset file": (train_over_a_run_holding_its_preset, "an input of this"),
    "train --overwrite of a run whose config.json is corrupt": (overwrite_run_with_corrupt_config, "not a gptlab run"),
    # issue 13: paths, files and OS errors
    "train --out an existing file": (train_out_is_a_file, "is an existing file"),
    "prepare --out an existing file": (prepare_out_is_a_file, "is an existing file"),
    "--out under a file": (out_under_a_file, "is a file, not a folder"),
    "--out a symbolic link": (out_is_a_symlink, "symbolic link"),
    "--out in a folder that is not writable": (out_parent_not_writable, "writ"),
    "a file name that is not UTF-8": (non_utf8_file_name, "not valid UTF-8; rename it"),
    "an --out name that is not UTF-8": (non_utf8_out_name, "not valid UTF-8; rename it"),
    "a FIFO given to prepare": (fifo_source, "is a pipe or a device"),
    "too little text to train on": (too_little_text_to_train, "supports a block_size of at most"),
    "token ids outside the vocabulary": (data_with_ids_outside_the_vocabulary, "outside the vocabulary"),
    "--resume on token files cut short": (resume_on_cut_token_files, "were cut or changed"),
    "eval on token files cut short": (eval_on_cut_token_files, "were cut or changed"),
    "eval on data whose tokenizer differs, same size": (
        eval_on_data_with_another_tokenizer_of_the_same_size,
        "another tokenizer",
    ),
    "eval --text not UTF-8 (the advice names a flag eval has)": (eval_text_not_utf8, "--encoding-errors replace"),
    "--resume a run whose config.json is corrupt": (resume_run_with_corrupt_config, "not valid JSON"),
    "--init-from a checkpoint without its tokenizer": (init_from_without_its_tokenizer, "missing"),
    "inspect --out an existing file": (inspect_out_is_a_file, "is an existing file"),
    "inspect --top 0": (inspect_top_zero, "--top must be at least 1"),
    "report --out a folder": (report_out_is_a_folder, "is a directory"),
    "report --out the run's config.json": (report_over_the_runs_config, "is an input of this command"),
    "report on corrupt metrics": (report_on_corrupt_metrics, "line 2 is not a metrics row"),
    "report on a corrupt config.json": (report_on_corrupt_config, "not valid JSON"),
    "import-gpt2 with a config.json holding a list": (import_config_holding_a_list, "not a JSON object"),
    "import-gpt2 with a config larger than its weights": (import_config_larger_than_its_weights, "does not match"),
    "a checkpoint config larger than its weights": (checkpoint_config_larger_than_its_weights, "does not match"),
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
