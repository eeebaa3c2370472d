import math
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup would hang ~30 s offline before failing
torch.set_flush_denormal(True)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "tinyshakespeare.txt").is_file():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (it sits beside the project root in this workplace)")
    return SHARED_DATA


def small_corpus() -> str:
    """A small, varied English text (a few KB) that any test can prepare in milliseconds."""
    lines = []
    words = "the king and queen of denmark speak with a ghost upon the castle walls at night".split()
    for i in range(400):
        n = 5 + i % 7
        lines.append(" ".join(words[(i * 3 + j) % len(words)] for j in range(n)).capitalize() + ("." if i % 3 else "!"))
    return "\n".join(lines) + "\n"


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(small_corpus())
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny GPT trained for 60 steps on the small corpus, shared read-only by the evaluation tests."""
    from gptlab.config import build_config
    from gptlab.data.prepare import prepare
    from gptlab.training.trainer import train

    root = tmp_path_factory.mktemp("tiny_run")
    (root / "corpus.txt").write_text(small_corpus())
    prepare([str(root / "corpus.txt")], root / "data")
    cfg = build_config(
        "tiny", {"max_iters": 60, "eval_interval": 20, "eval_iters": 2, "log_interval": 10, "device": "cpu"}
    )
    train(cfg, root / "data", root / "run", progress=False)
    return root / "run"


@pytest.fixture
def tiny_config():
    from gptlab.config import ModelConfig

    return ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def ln(x: float) -> float:
    return math.log(x)


@pytest.fixture
def char_textgen():
    """A TextGenerator over an untrained char GPT (block 32): fast, deterministic under a seed."""
    from gptlab.config import ModelConfig
    from gptlab.generation import TextGenerator
    from gptlab.models import GPT
    from gptlab.tokenizers.char import CharTokenizer

    tok = CharTokenizer.train(["ROMEO: JULIET: the king and queen of denmark speak!\n,.?"])
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32))
    return TextGenerator(model, tok)
