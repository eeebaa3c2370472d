"""The spine's quality bar (issue 2): the `shakespeare-char-cpu` preset on Tiny Shakespeare reaches
val loss <= 1.90 after its 2000 steps (nanoGPT's recipe: about 1.91 over seeds; ours ends at 1.854).

The suite's one long test, about 2 minutes on 2 CPU cores: the end-to-end check that data, model,
optimizer and schedule together still train as well as they did (docs/experiments.md)."""

from gptlab.config import build_config
from gptlab.data.prepare import prepare
from gptlab.training.trainer import train


def test_shakespeare_char_cpu_reaches_val_loss_1_90(shared_data, tmp_path):
    prepare([shared_data / "tinyshakespeare.txt"], tmp_path / "data")  # one file: nanoGPT's 90/10 split
    cfg = build_config("shakespeare-char-cpu", {"device": "cpu"})
    result = train(cfg, tmp_path / "data", tmp_path / "run", progress=False)
    assert result.steps == 2000
    assert result.final_val_loss <= 1.90, f"val loss {result.final_val_loss:.4f} after 2000 steps (was 1.854)"
