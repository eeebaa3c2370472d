"""Settings from the user: every numeric setting has a range, checked in one place before anything is
created; one flag style everywhere; sizes checked against memory; the console survives anything.

The range tests are driven by the dataclasses themselves, so a new numeric field without a declared
range fails here, and every declared range is tried from every side it has."""

from __future__ import annotations

import argparse
import io
import json
import math
import re
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptlab.atomic import write_checksums
from gptlab.checkpoint import save_checkpoint
from gptlab.cli import build_parser, main
from gptlab.config import ModelConfig, RunConfig, TrainConfig, build_config
from gptlab.data.prepare import prepare
from gptlab.device import available_cpus, set_threads
from gptlab.errors import GptlabError
from gptlab.generation import TextGenerator
from gptlab.generation.console import Console
from gptlab.generation.generate import generate
from gptlab.generation.sampling import SamplingSettings, sample_next
from gptlab.models import GPT
from gptlab.tokenizers.char import CharTokenizer
from gptlab.training.metrics import read_metrics
from gptlab.training.trainer import train

CONFIGS = (ModelConfig, TrainConfig, SamplingSettings)
ROOT = Path(__file__).resolve().parents[1]


def numeric_fields(cls):
    return [f for f in fields(cls) if re.search(r"\b(int|float)\b", str(f.type))]


def out_of_range(f) -> list:
    """Values outside the field's declared range: past each bound, not finite, not a number, a fraction."""
    rng = f.metadata["range"]
    step = 1 if rng.whole else 0.5
    values = ["3"]  # text where a number belongs (the Python API; the command line converts first)
    if rng.low is not None:
        values.append(rng.low if rng.low_open else rng.low - step)
    if rng.high is not None:
        values.append(rng.high if rng.high_open else rng.high + step)
    values += [2.5, 2**63] if rng.whole else [math.nan, math.inf, -math.inf]
    return values


def test_every_numeric_setting_declares_its_range():
    for cls in CONFIGS:
        missing = [f.name for f in numeric_fields(cls) if "range" not in f.metadata]
        assert not missing, f"{cls.__name__} fields without a range: {missing} (declare one with config.number)"
    assert len([f for cls in CONFIGS for f in numeric_fields(cls)]) >= 35


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_out_of_range_value_is_refused_in_one_line(cls):
    instance = cls(vocab_size=65) if cls is ModelConfig else cls()
    instance.validate()  # the defaults are in range
    for f in numeric_fields(cls):
        for value in out_of_range(f):
            with pytest.raises(GptlabError) as refused:
                replace(instance, **{f.name: value}).validate()
            message = str(refused.value)
            assert "\n" not in message and f.name.replace("_", "-" if cls is SamplingSettings else "_") in message


def train_flag_cases():
    for cls in (ModelConfig, TrainConfig):
        for f in numeric_fields(cls):
            for value in out_of_range(f)[1:]:
                yield f.name, value


def test_every_out_of_range_train_key_is_refused_before_anything_is_created(tmp_path, capsys):
    run = tmp_path / "run"
    for key, value in train_flag_cases():
        flag = f"--{key.replace('_', '-')}={value}"  # one word: argparse would take -inf for a flag
        code = main(["train", "--data", str(tmp_path / "data"), "--out", str(run), "--preset", "tiny", flag])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and key in err, (key, value, err)
        assert not run.exists()
    # the examples, word for word
    for flag, value, words in [
        ("--grad_clip", "-1", "grad_clip must be at least 0 (0 turns clipping off)"),
        ("--weight_decay", "-0.1", "weight_decay must be at least 0"),
        ("--muon_momentum", "5", "muon_momentum must be in [0, 1)"),
        ("--beta1", "2", "beta1 must be in [0, 1)"),
    ]:
        assert main(["train", "--data", "d", "--out", str(run), "--preset", "tiny", flag, value]) == 2
        assert words in capsys.readouterr().err and not run.exists()


def test_config_files_of_the_wrong_shape_are_refused_naming_the_file(tmp_path, capsys):
    for data, words in [
        ([1, 2], "holds a list where an object"),
        ({"model": [1]}, "section 'model' holds a list"),
        ({"model": {"n_layer": [2]}}, "n_layer expects int, got a list"),
        ({"train": {"device": 3}}, "device expects text"),
        ({"train": {"grad_clip": -1}}, None),  # in range only once validated: info validates
        ({"optimizer": {}}, "unknown config section 'optimizer'"),
    ]:
        path = tmp_path / "config.json"
        path.write_text(json.dumps(data))
        assert main(["info", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and (words or "grad_clip must be at least 0") in err
        if words:
            assert str(path) in err
            with pytest.raises(GptlabError, match=re.escape(words)):
                RunConfig.load(path)


# ---------------------------------------------------------------- checkpoints whose config.json is a bad shape


@pytest.fixture
def checkpoint(tmp_path, char_textgen):
    tok = char_textgen.tokenizer
    cfg = RunConfig(model=char_textgen.model.config)
    info = {"tokenizer": {"kind": tok.kind, "file": tok.file_name, "vocab_size": tok.vocab_size}}
    return save_checkpoint(tmp_path / "ckpt", char_textgen.model, cfg, info, [tok.save(tmp_path)])


def damage(ckpt: Path, edit) -> None:
    """Rewrite the checkpoint's config.json and its checksums, as a consistent but wrong file would be."""
    config = ckpt / "config.json"
    config.write_text(json.dumps(edit(json.loads(config.read_text()))))
    write_checksums(ckpt)


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda c: [c], "holds a list where a checkpoint's config object belongs"),
        (lambda c: {k: v for k, v in c.items() if k != "run"}, "has no 'run' object"),
        (lambda c: {**c, "run": [1]}, "holds a list for 'run'"),
        (lambda c: {**c, "run": {"model": [1]}}, "section 'model' holds a list"),
        (lambda c: {**c, "tokenizer": "char"}, "holds text for 'tokenizer'"),
        (lambda c: {**c, "tokenizer": {}}, "does not say which tokenizer"),
        (lambda c: {**c, "val_loss": "low"}, "holds text for 'val_loss'"),
    ],
    ids=["list", "no run", "run a list", "model a list", "tokenizer text", "no tokenizer kind", "val_loss text"],
)
def test_a_checkpoint_config_of_the_wrong_shape_is_one_line_in_every_verb(
    checkpoint, corpus_file, tmp_path, capsys, edit, words
):
    damage(checkpoint, edit)
    prepare([str(corpus_file)], tmp_path / "data")
    verbs = [
        ["sample", str(checkpoint), "--max-new-tokens", "3"],
        ["eval", str(checkpoint), "--text", str(corpus_file)],
        ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--init-from", str(checkpoint)],
    ]
    if words != "does not say which tokenizer":
        verbs.append(["info", str(checkpoint)])  # info reads the config alone, not the tokenizer
    for argv in verbs:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and "config.json" in err, (argv, err)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- sampling settings and sizes


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--temperature", "nan"),
        ("--temperature", "inf"),
        ("--temperature", "-1"),
        ("--top-p", "nan"),
        ("--top-p", "0"),
        ("--top-k", "-1"),
        ("--repetition-penalty", "inf"),
        ("--repetition-penalty", "0"),
        ("--max-new-tokens", "-1"),
        ("--seed", "-1"),
    ],
)
def test_sampling_flags_out_of_range_are_refused_before_the_checkpoint_is_read(flag, value, tmp_path, capsys):
    assert main(["sample", str(tmp_path / "never-read"), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag} must be" in err


def test_any_positive_temperature_and_penalty_sample_a_real_token():
    logits = torch.randn(3, 50) * 10
    seen = torch.ones(3, 50, dtype=torch.bool)
    for temperature, penalty in [(5e-324, 1.0), (1e-30, 1e30), (1e300, 1e-30), (1.0, 1e-300)]:
        settings = SamplingSettings(temperature=temperature, top_k=None, repetition_penalty=penalty).validate()
        token = sample_next(logits, settings, torch.Generator().manual_seed(0), seen)
        assert token.shape == (3, 1) and ((0 <= token) & (token < 50)).all()
        if temperature < 1e-20 and penalty == 1.0:
            assert torch.equal(token, logits.argmax(-1, keepdim=True))  # a vanishing temperature is greedy


def test_sizes_that_would_not_fit_in_memory_are_refused_before_allocating(checkpoint, char_textgen, capsys):
    for flags in (["--max-new-tokens", "10000000000000"], ["--num-samples", "100000000000", "--max-new-tokens", "5"]):
        assert main(["sample", str(checkpoint), "--device", "cpu", *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is free; lower --max-new-tokens (/max in chat) or --num-samples" in err
    with pytest.raises(GptlabError, match="is free"):  # the console prints it as one line (run)
        Console(char_textgen, input, io.StringIO()).handle("/max 10000000000000")
    assert char_textgen.settings.max_new_tokens == 500  # unchanged
    assert main(["chat", str(checkpoint), "--device", "cpu", "--max-new-tokens", "10000000000000"]) == 2
    assert "is free" in capsys.readouterr().err  # before the first prompt


# ---------------------------------------------------------------- the console


def conversation_model(block_size: int) -> TextGenerator:
    tok = CharTokenizer.train(["ROMEO: JULIET: the king and queen of denmark speak!\n,.?"])
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32))
    return TextGenerator(model, tok, SamplingSettings(max_new_tokens=24, temperature=1.0, seed=3))


def test_the_console_keeps_answering_a_conversation_many_times_longer_than_the_context():
    textgen = conversation_model(block_size=64)
    lines = [("ROMEO: the king speaks" if i % 2 else "JULIET: and the queen of denmark?") for i in range(14)]
    console = Console(textgen, input, io.StringIO())
    for i, line in enumerate(lines):
        before = len(console.text)
        console.handle(line)
        answer = console.text[before:].removeprefix("\n").removeprefix(line)
        assert answer, f"turn {i} got no answer"
    out = console.out.getvalue()
    assert "error" not in out and len(console.text) > 8 * 64  # many contexts long, every turn answered
    with pytest.raises(GptlabError, match="longer than the model's context"):  # without the window: refused
        textgen.generate(console.text)
    tail = textgen.tokenizer.decode(textgen.tokenizer.encode(console.text)[-64:])
    assert textgen.generate(console.text, truncate=True, seed=5) == textgen.generate(tail, seed=5)


def test_a_turn_that_fails_in_any_way_costs_one_line_and_the_conversation_goes_on(char_textgen, monkeypatch):
    real_stream = TextGenerator.stream
    calls = []

    def flaky_stream(self, prompt, **kw):
        calls.append(prompt)
        if len(calls) == 2:
            raise RuntimeError("a bug deep in a turn\nsecond line")
        return real_stream(self, prompt, **kw)

    monkeypatch.setattr(TextGenerator, "stream", flaky_stream)
    lines = ["/max 5", "the king", "the queen", ValueError("embedded null character"), "ki\x00ng", "/temperature nan"]
    lines += ["the ghost", "/quit"]
    out = io.StringIO()

    def read_line(prompt):
        line = lines.pop(0)
        if isinstance(line, BaseException):
            raise line
        return line

    Console(char_textgen, read_line, out).run()
    text = out.getvalue()
    assert "error: RuntimeError: a bug deep in a turn\n" in text and "second line" not in text
    assert "error: that line could not be read (embedded null character)" in text
    assert "not in this model's vocabulary: '\\x00'" in text
    assert "error: --temperature must be a finite number at least 0" in text
    assert len(calls) == 3 and not lines  # the turn after the failures ran, and /quit was read


# ---------------------------------------------------------------- one flag style


def verbs():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def value_for(action) -> list[str]:
    if action.nargs == 0:
        return []
    one = str(action.choices[-1]) if action.choices else {int: "3", float: "0.5"}.get(action.type, "v")
    return [one]


def test_every_flag_of_every_verb_takes_both_spellings_and_help_shows_dashes():
    parser, choices = verbs()
    for verb_name, verb in choices.items():
        shown = verb.format_help()
        assert not re.search(r"--[a-z0-9]+_[a-z0-9_]*", shown), f"gptlab {verb_name} --help shows an underscore flag"
        required = []
        for action in verb._actions:
            if not action.option_strings:
                required += ["x"]  # a positional
            elif action.required:
                required += [action.option_strings[0], *value_for(action)]
        base = vars(parser.parse_args([verb_name, *required]))
        flags = [(o, a) for a in verb._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
        assert flags
        for option, action in flags:
            assert "_" not in option, f"{verb_name} {option}: flags are registered once, with dashes"
            underscored = "--" + option[2:].replace("-", "_")
            dashed = vars(parser.parse_args([verb_name, *required, option, *value_for(action)]))
            assert dashed != base or action.required, (verb_name, option)
            assert vars(parser.parse_args([verb_name, *required, underscored, *value_for(action)])) == dashed
            if value_for(action):
                joined = vars(parser.parse_args([verb_name, *required, f"{underscored}={value_for(action)[0]}"]))
                assert joined == dashed


def test_the_readme_and_docs_show_only_dashed_flags():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        found = re.findall(r"(?<![\w-])--[a-z0-9]+_[a-z0-9_]*", path.read_text())
        assert not found, f"{path.name} shows {found}"


# ---------------------------------------------------------------- small verbs


def test_tokenize_works_offline_with_no_flags(capsys):
    assert main(["tokenize", "the kingdom"]) == 0  # bpe trained on the bundled corpus: nothing to download
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("bpe tokenizer (vocab ") and "11 characters" in out[0] and out[2].split()[0].isdigit()


def test_eval_takes_the_encoding_errors_flag_its_advice_names(checkpoint, tmp_path, capsys):
    text = tmp_path / "latin1.txt"
    text.write_bytes(b"the king and queen\ncaf\xe9\n")
    assert main(["eval", str(checkpoint), "--text", str(text)]) == 2
    assert "--encoding-errors replace" in capsys.readouterr().err
    assert main(["eval", str(checkpoint), "--text", str(text), "--encoding-errors", "replace"]) == 2
    assert "not in this model's vocabulary" in capsys.readouterr().err  # read this time, then refused by the model


def test_inspect_refuses_counts_and_temperatures_out_of_range(checkpoint, tmp_path, capsys):
    for flags, words in [
        (["--top", "-1"], "--top must be at least 1"),
        (["--top", "0"], "--top must be at least 1"),
        (["--temperature", "nan"], "temperature must be a finite number > 0"),
        (["--only", "position-loss", "--max-tokens", "-5"], "--max-tokens must be at least 2"),
    ]:
        argv = ["inspect", str(checkpoint), "--out", str(tmp_path / "pics"), "--prompt", "the king", *flags]
        assert main(argv if "--only" in flags else [*argv, "--only", "next-token"]) == 2
        assert words in capsys.readouterr().err
    assert (
        main(
            [
                "inspect",
                str(checkpoint),
                "--out",
                str(tmp_path / "p"),
                "--only",
                "next-token",
                "--prompt",
                "k",
                "--top",
                "999",
            ]
        )
        == 0
    )


def test_sample_no_cache_recomputes_and_gives_the_cached_text(checkpoint, capsys, monkeypatch):
    argv = ["sample", str(checkpoint), "--prompt", "the king", "--max-new-tokens", "40", "--temperature", "0"]
    assert main(argv) == 0
    cached = capsys.readouterr().out

    def no_cache_allowed(*args, **kwargs):
        raise AssertionError("--no-cache built a KV cache")

    monkeypatch.setattr("gptlab.generation.generate.KVCache", no_cache_allowed)
    assert main([*argv, "--no-cache"]) == 0
    assert capsys.readouterr().out == cached  # the same greedy text, computed without the cache
    with pytest.raises(AssertionError, match="built a KV cache"):
        main(argv)


def test_threads_come_from_the_cores_available_and_can_be_set(checkpoint, monkeypatch, capsys):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert set_threads(0) == available_cpus() == torch.get_num_threads()
        assert 1 <= available_cpus() <= len(__import__("os").sched_getaffinity(0))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(4 * available_cpus()))  # torchrun's processes share the cores
        assert available_cpus() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads(0) == 1
        assert main(["sample", str(checkpoint), "--max-new-tokens", "2", "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
        assert main(["sample", str(checkpoint), "--threads", "-1"]) == 2
        assert "--threads must be a whole number in [0, 1024]" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_the_model_config_is_validated_once_per_model_build(monkeypatch):
    from gptlab.models import build_model

    calls = []
    real = ModelConfig.validate
    monkeypatch.setattr(ModelConfig, "validate", lambda self: (calls.append(1), real(self))[1])
    build_model(ModelConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8))
    assert len(calls) == 1


# ---------------------------------------------------------------- stop early, resume exactly


def test_stop_at_then_resume_equals_the_uninterrupted_run(corpus_file, tmp_path, capsys):
    prepare([str(corpus_file)], tmp_path / "data")
    keys = {"max_iters": 12, "eval_interval": 6, "eval_iters": 2, "log_interval": 1, "grad_accum": 2}
    keys |= {"batch_size": 4, "dropout": 0.1, "device": "cpu", "sample_tokens": 0, "threads": 1}
    straight = tmp_path / "straight"
    train(build_config("tiny", keys), tmp_path / "data", straight, progress=False)

    run = tmp_path / "run"
    flags = [x for k, v in keys.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    assert (
        main(
            ["train", "--data", str(tmp_path / "data"), "--out", str(run), "--preset", "tiny", "--stop-at", "5", *flags]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "stopped at step 5 of 12 as asked (--stop-at): 5 steps" in out and f"gptlab train --resume {run}" in out
    assert max(r["step"] for r in read_metrics(run)) == 5
    assert main(["train", "--resume", str(run)]) == 0
    assert "done: 7 steps (steps 6-12) in" in capsys.readouterr().out  # not "12 steps": 7 ran this time

    def curve(r):
        return [(m["kind"], m["step"], m.get("loss"), m.get("lr"), m.get("val_loss")) for m in read_metrics(r)]

    assert curve(run) == curve(straight)  # the same losses and learning rates, step for step
    a, b = load_file(straight / "last" / "model.safetensors"), load_file(run / "last" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["train", "--resume", str(run), "--max-iters", "14", "--stop-at", "12"]) == 2
    assert "already at step 12" in capsys.readouterr().err


def test_generate_refuses_settings_out_of_range_too(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    with pytest.raises(GptlabError, match="--temperature must be a finite number"):
        generate(model, [1], 3, temperature=math.nan)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--shard-tokens", "0"], "--shard-tokens must be at least 1"),
    ],
)
def test_prepare_refuses_counts_below_one_instead_of_ignoring_them(corpus_file, tmp_path, capsys, flags, words):
    assert main(["prepare", str(corpus_file), "--out", str(tmp_path / "d"), *flags]) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "d").exists()
