"""The benchmark machinery: the suite runner, the transformers twin, the GPU script's CPU smoke run."""

import json

import pytest
import torch

from benchmarks.__main__ import load_modules, replace_block
from gptlab.models import GPT


def test_replace_block_replaces_only_between_its_markers():
    doc = (
        "# Benchmarks\n\nhand-written intro\n\n"
        "<!-- bench:training -->\nold table\n<!-- /bench:training -->\n\nhand note\n"
    )
    out = replace_block(doc, "training", "## Training\n\nnew table\n")
    assert "old table" not in out
    assert "<!-- bench:training -->\n## Training\n\nnew table\n<!-- /bench:training -->" in out
    assert out.startswith("# Benchmarks\n\nhand-written intro\n") and out.endswith("\n\nhand note\n")
    assert replace_block(out, "training", "## Training\n\nnew table") == out  # idempotent


def test_replace_block_appends_a_missing_block():
    out = replace_block("# Benchmarks\n", "prepare", "## Prepare\n\nt")
    assert out == "# Benchmarks\n\n<!-- bench:prepare -->\n## Prepare\n\nt\n<!-- /bench:prepare -->\n"


def test_a_missing_suite_module_fails_by_name(monkeypatch):
    import benchmarks.__main__ as runner

    monkeypatch.setitem(runner.SUITE, "no_such_bench", "something not written yet")
    with pytest.raises(
        SystemExit,
        match=r"benchmarks/no_such_bench\.py is missing \(something not written yet\).*python -m benchmarks training",
    ):
        load_modules(["training", "no_such_bench"])


def test_transformers_twin_computes_the_same_function(tiny_config):
    pytest.importorskip("transformers")
    from benchmarks.training import gptlab_loss, transformers_loss, transformers_twin

    tiny_config.bias = True
    torch.manual_seed(0)
    ours = GPT(tiny_config).eval()
    for p in ours.parameters():  # biases start at zero: move them so a missed copy would show
        torch.nn.init.normal_(p, std=0.05)
    twin = transformers_twin(ours, eot_id=tiny_config.vocab_size - 1).eval()
    assert sum(p.numel() for p in twin.parameters()) == sum(p.numel() for p in ours.parameters())
    x = torch.randint(0, tiny_config.vocab_size, (2, tiny_config.block_size))
    y = torch.randint(0, tiny_config.vocab_size, (2, tiny_config.block_size))
    with torch.no_grad():
        torch.testing.assert_close(twin(input_ids=x).logits, ours(x)[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(transformers_loss(twin, x, y), gptlab_loss(ours, x, y), atol=1e-5, rtol=1e-5)


def test_gpu_script_smoke_run_on_cpu(shared_data, tmp_path):
    from benchmarks.gpu import main

    out = tmp_path / "gpu"
    rc = main(
        [
            "--smoke",
            "--no-compile",
            "--data",
            str(shared_data / "tinyshakespeare.txt"),
            "--out",
            str(out),
            "--max-seconds",
            "120",
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]  # scratch removed
    results = json.loads((out / "results.json").read_text())
    assert results["throughput"]["eager"]["tokens_per_s"] > 0
    assert (
        results["target"]["reached"] is not None
        and results["target"]["reached"]["val_loss"] <= results["target"]["target"]
    )
    assert "### Time to val loss" in (out / "results.md").read_text()
