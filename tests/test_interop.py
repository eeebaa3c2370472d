"""GPT-2 interop against `transformers` itself: imported weights compute HF's logits, exported ones load in HF."""

import copy
import json
import shutil

import pytest
import torch

from gptlab.checkpoint import load_checkpoint
from gptlab.cli import main
from gptlab.config import ModelConfig, build_config
from gptlab.data.prepare import prepare
from gptlab.errors import GptlabError
from gptlab.generation.generate import generate
from gptlab.interop.hf import export_hf, gpt2_incompatibilities, gpt2_model_from_hf, import_gpt2
from gptlab.training.trainer import train

transformers = pytest.importorskip("transformers")  # a test/extra dependency only

# GPT-2's own config with small shapes: everything but the sizes is what gpt2 .. gpt2-xl use.
SMALL_GPT2 = dict(n_positions=32, n_embd=32, n_layer=2, n_head=4)


def random_gpt2(vocab_size: int, seed: int = 0):
    """A GPT2LMHeadModel whose every parameter (LayerNorm gains and biases too) is random, so any
    misplaced or untransposed tensor changes the logits."""
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=vocab_size, **SMALL_GPT2))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture
def hf_dir(tmp_path):
    path = tmp_path / "hf-gpt2"
    random_gpt2(vocab_size=101).save_pretrained(path)
    return path


def test_imported_gpt2_gives_transformers_logits_and_greedy_continuation(hf_dir):
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ours = gpt2_model_from_hf(hf_dir)
    assert ours.config.block_size == 32 and ours.config.bias and ours.config.vocab_size == 101
    idx = torch.randint(0, 101, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        logits, _ = ours(idx)
    assert (logits - expected).abs().max().item() < 1e-4

    prompt = idx[0, :8].tolist()
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, pad_token_id=0)[0, 8:].tolist()
    assert generate(ours, prompt, 20, temperature=0.0)[0] == theirs
    assert len(set(theirs)) > 1  # a continuation that says something about the weights, not one token repeated


def test_import_refuses_what_gpt2_in_gptlab_cannot_compute(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    for key, value, message in [
        ("activation_function", "relu", "activation_function"),
        ("layer_norm_epsilon", 1e-6, "layer_norm_epsilon"),
        ("n_inner", 64, "n_inner"),
        ("model_type", "llama", "model_type"),
    ]:
        (hf_dir / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(GptlabError, match=message):
            gpt2_model_from_hf(hf_dir)
    (hf_dir / "config.json").write_text(json.dumps({**config, "n_embd": 64}))
    with pytest.raises(GptlabError, match="does not match its config.json"):
        gpt2_model_from_hf(hf_dir)


def test_sharded_safetensors_import_like_one_file(hf_dir, tmp_path):
    sharded = tmp_path / "sharded"
    transformers.AutoModelForCausalLM.from_pretrained(hf_dir).save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file() and not (sharded / "model.safetensors").exists()
    one, many = gpt2_model_from_hf(hf_dir), gpt2_model_from_hf(sharded)
    for (name, a), (_, b) in zip(one.state_dict().items(), many.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.fixture(scope="module")
def saved_gpt2_with_tokenizer(tmp_path_factory):
    """A random GPT-2 with GPT-2's vocabulary, saved as a Hugging Face directory with vocab.json + merges.txt."""
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "gpt2" / "encoder.json").is_file():
        pytest.skip(f"GPT-2 tokenizer files not found at {SHARED_DATA / 'gpt2'}")
    path = tmp_path_factory.mktemp("hf-gpt2-vocab")
    random_gpt2(vocab_size=50257, seed=1).save_pretrained(path)
    shutil.copy(SHARED_DATA / "gpt2" / "encoder.json", path / "vocab.json")  # OpenAI's names for HF's two files
    shutil.copy(SHARED_DATA / "gpt2" / "vocab.bpe", path / "merges.txt")
    return path


@pytest.fixture
def hf_gpt2_with_tokenizer(saved_gpt2_with_tokenizer, tmp_path):
    return shutil.copytree(saved_gpt2_with_tokenizer, tmp_path / "hf-gpt2-vocab")


def test_import_gpt2_writes_a_checkpoint_with_gpt2_tokenizer_that_samples(
    hf_gpt2_with_tokenizer, shared_data, tmp_path, capsys
):
    ckpt_dir = tmp_path / "imported"
    assert main(["import-gpt2", str(hf_gpt2_with_tokenizer), "--out", str(ckpt_dir)]) == 0
    assert "--init-from" in capsys.readouterr().out
    ckpt = load_checkpoint(ckpt_dir)
    assert ckpt.tokenizer.kind == "gpt2" and ckpt.info["tokenizer"]["vocab_size"] == 50257 and ckpt.info["step"] == 0
    src = hf_gpt2_with_tokenizer
    reference = transformers.GPT2TokenizerFast.from_pretrained(src)  # transformers' own reading of the same files
    text = "Hello world, it's   GPT-2!\n\tÜber 2024 😀"
    assert ckpt.tokenizer.encode(text) == reference.encode(text)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_gpt2_with_tokenizer).eval()
    idx = torch.tensor([ckpt.tokenizer.encode(text)])
    with torch.no_grad():
        assert (ckpt.model(idx)[0] - hf(idx).logits).abs().max().item() < 1e-4
    assert main(["sample", str(ckpt_dir), "--prompt", "Hello", "--max-new-tokens", "5", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("Hello")


def test_import_gpt2_reads_the_tokenizer_from_tokenizer_json_or_a_tiktoken_file(
    hf_gpt2_with_tokenizer, shared_data, tmp_path
):
    src = hf_gpt2_with_tokenizer
    tokenizer = transformers.GPT2TokenizerFast.from_pretrained(src)
    (src / "vocab.json").unlink()
    (src / "merges.txt").unlink()
    tokenizer.save_pretrained(src)  # transformers 5 writes tokenizer.json only
    assert (src / "tokenizer.json").is_file() and not (src / "vocab.json").exists()
    from_json = load_checkpoint(import_gpt2(src, tmp_path / "a")).tokenizer
    (src / "tokenizer.json").unlink()
    with pytest.raises(GptlabError, match="no GPT-2 tokenizer.*--tokenizer-file"):
        import_gpt2(src, tmp_path / "b")
    from_tiktoken = load_checkpoint(
        import_gpt2(src, tmp_path / "b", tokenizer_file=shared_data / "gpt2" / "gpt2.tiktoken")
    ).tokenizer
    text = "The quick brown fox, 12 jumps!\n"
    assert from_json.encode(text) == from_tiktoken.encode(text) and len(from_json.encode(text)) > 5


def test_imported_gpt2_exports_back_to_transformers_unchanged(hf_gpt2_with_tokenizer, tmp_path):
    ckpt_dir, out = import_gpt2(hf_gpt2_with_tokenizer, tmp_path / "imported"), tmp_path / "exported"
    export_hf(ckpt_dir, out)
    original = transformers.AutoModelForCausalLM.from_pretrained(hf_gpt2_with_tokenizer).eval()
    exported = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    idx = torch.randint(0, 50257, (1, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (original(idx).logits - exported(idx).logits).abs().max().item() < 1e-5
    theirs, ours = transformers.AutoTokenizer.from_pretrained(out), load_checkpoint(ckpt_dir).tokenizer
    text = "Hello world, it's   GPT-2!\n\tÜber 2024 😀  "
    assert theirs.encode(text) == ours.encode(text) and theirs.decode(ours.encode(text)) == text


@pytest.mark.parametrize("kind", ["word", "bpe", "gpt2"])
def test_exported_tokenizers_encode_like_gptlab(kind, shared_data, tmp_path):
    """Every kind written as tokenizer.json: AutoTokenizer gives gptlab's ids on a varied text."""
    from gptlab.interop.hf_tokenizers import save_hf_tokenizer
    from gptlab.tokenizers import train_tokenizer

    corpus = (shared_data / "tinyshakespeare.txt").read_text()[:100_000]
    varied = "Café naïve — “quoted” don't well-known ’tis\t\ttab  x² _under_score 3.14\r\n\n  end "
    tok = train_tokenizer(
        kind,
        [corpus + varied],
        **({"tokenizer_file": shared_data / "gpt2" / "gpt2.tiktoken"} if kind == "gpt2" else {}),
    )
    save_hf_tokenizer(tok, tmp_path, model_max_length=1024)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in (varied, corpus[-20_000:]):
        ids = tok.encode(text)
        assert theirs.encode(text) == ids
        if kind != "word":  # word decode in transformers joins tokens with spaces (see docs/interop.md)
            assert theirs.decode(ids) == tok.decode(ids) == text
    assert theirs.eos_token_id == tok.eot_id


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("char_run")
    data, run = tmp_path / "data", tmp_path / "run"
    (tmp_path / "corpus.txt").write_text(
        "The king and queen speak with a ghost!\n\nUpon the  castle walls, at night.\n" * 40
    )
    prepare([str(tmp_path / "corpus.txt")], data)
    train(
        build_config("tiny", {"max_iters": 10, "eval_interval": 10, "eval_iters": 1, "device": "cpu"}),
        data,
        run,
        progress=False,
    )
    return run


def test_gptlab_model_exported_loads_in_transformers_with_the_same_logits(char_run, tmp_path):
    out = tmp_path / "hf"
    assert main(["export-hf", str(char_run), str(out)]) == 0
    ckpt = load_checkpoint(char_run)
    assert not ckpt.config.model.bias  # the zero-filled biases are part of what is checked
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    idx = torch.randint(
        0, ckpt.config.model.vocab_size, (2, ckpt.config.model.block_size), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        logits, _ = ckpt.model(idx)
        assert (hf(idx).logits - logits).abs().max().item() < 1e-4


def test_exported_char_tokenizer_encodes_and_decodes_like_gptlab(char_run, tmp_path):
    out = tmp_path / "hf"
    export_hf(char_run, out)
    ours = load_checkpoint(char_run).tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    texts = [
        "",
        " ",
        "\n",
        "  the  queen\n\nspeaks \n",
        "The king!",
        "a\n k \n\n g",
        "Upon the castle walls, at night.\n" * 3,
    ]
    for text in texts:
        ids = ours.encode(text)
        assert theirs.encode(text) == ids, repr(text)
        assert theirs.decode(ids) == ours.decode(ids) == text
    assert theirs.eos_token_id == ours.eot_id
    with pytest.raises(Exception):  # noqa: B017 (transformers' error type is not part of its API)
        theirs.encode("~")  # not in the vocabulary: an error in both, never a silent substitute
    with pytest.raises(GptlabError):
        ours.encode("~")


def test_export_refuses_options_gpt2_cannot_represent_and_names_them(char_run, tmp_path):
    cfg = load_checkpoint(char_run).config.model
    assert gpt2_incompatibilities(cfg) == []
    options = [
        ("arch", "bigram"),
        ("positions", "rope"),
        ("norm", "rmsnorm"),
        ("norm_position", "post"),
        ("activation", "swiglu"),
        ("qk_norm", True),
        ("tie_embeddings", False),
        ("n_kv_head", 1),
    ]
    for name, value in options:
        changed = copy.copy(cfg)
        setattr(changed, name, value)
        (problem,) = gpt2_incompatibilities(changed)
        assert problem.startswith(f"{name}={value!r}") and "GPT-2" in problem


def test_export_of_a_rope_model_says_why_it_cannot_be_gpt2(corpus_file, tmp_path, capsys):
    if not hasattr(ModelConfig(), "positions"):
        pytest.skip("ModelConfig has no positions option until the models branch is merged")
    data, run = tmp_path / "data", tmp_path / "run"
    prepare([str(corpus_file)], data)
    train(
        build_config(
            "tiny", {"max_iters": 1, "eval_interval": 1, "eval_iters": 1, "device": "cpu", "positions": "rope"}
        ),
        data,
        run,
        progress=False,
    )
    assert main(["export-hf", str(run), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be written as GPT-2: positions='rope'" in err and "rotary" in err
    assert not (tmp_path / "hf").exists()


def test_export_never_replaces_a_directory_it_did_not_write(char_run, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export-hf", str(char_run), str(out)]) == 2
    assert main(["export-hf", str(char_run), str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "already exists" in err and "refusing" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    shutil.rmtree(out)
    assert main(["export-hf", str(char_run), str(out)]) == 0
    assert main(["export-hf", str(char_run), str(out), "--overwrite"]) == 0
    assert {"checksums.json", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} == {
        p.name for p in out.iterdir()
    }


def test_fine_tuning_starts_from_an_imported_gpt2(hf_gpt2_with_tokenizer, corpus_file, shared_data, tmp_path):
    from gptlab.data.batches import TokenData
    from gptlab.training.metrics import read_metrics
    from gptlab.training.trainer import estimate_loss

    imported = tmp_path / "imported"
    import_gpt2(hf_gpt2_with_tokenizer, imported)
    data = tmp_path / "data"
    prepare(
        [str(corpus_file)],
        data,
        tokenizer="gpt2",
        tokenizer_options={"tokenizer_file": str(shared_data / "gpt2" / "gpt2.tiktoken")},
    )
    cfg = build_config(
        None,
        {
            "max_iters": "4",
            "eval_interval": "2",
            "eval_iters": "2",
            "batch_size": "2",
            "learning_rate": "1e-3",
            "min_lr": "1e-4",
            "warmup_iters": "0",
            "device": "cpu",
        },
    )
    result = train(cfg, data, tmp_path / "run", init_from=imported)
    start = load_checkpoint(imported)
    evals = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "eval"]
    # the first evaluation sees the imported weights unchanged, then fine-tuning lowers the loss
    expected = estimate_loss(start.model, TokenData(data), result_config(tmp_path / "run"), torch.device("cpu"))
    assert abs(evals[0]["val_loss"] - expected["val"]) < 1e-4
    assert evals[-1]["train_loss"] < evals[0]["train_loss"]
    assert load_checkpoint(tmp_path / "run").tokenizer.kind == "gpt2" and result.steps == 4


def result_config(run_dir):
    from gptlab.config import RunConfig

    return RunConfig.from_dict(json.loads((run_dir / "config.json").read_text())["run"])
