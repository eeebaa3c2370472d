import math

import numpy as np
import pytest
import torch

from gptlab.checkpoint import Checkpoint, load_checkpoint
from gptlab.cli import main
from gptlab.config import RunConfig
from gptlab.data.batches import TokenData
from gptlab.evaluation.eval import batch_token_losses, evaluate_ids, evaluate_split, evaluate_text, token_losses
from gptlab.tokenizers.char import CharTokenizer
from gptlab.training.trainer import estimate_loss


class TableModel(torch.nn.Module):
    """A bigram model with a fixed next-token table: its losses can be worked out by hand."""

    def __init__(self, probs: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(probs.log())

    def forward(self, idx, targets=None):
        return self.logits[idx], None


def table_checkpoint(block_size: int) -> Checkpoint:
    tok = CharTokenizer(["a", "é"])  # ids: a=0, é=1, end-of-text=2; é is 2 bytes in UTF-8
    probs = torch.tensor(
        [
            [0.25, 0.25, 0.50],  # after a: p(é | a) = 1/4
            [0.50, 0.25, 0.25],  # after é: p(a | é) = 1/2
            [0.50, 0.25, 0.25],  # after end-of-text: p(a | eot) = 1/2
        ]
    )
    cfg = RunConfig()
    cfg.model.block_size, cfg.model.vocab_size = block_size, tok.vocab_size
    return Checkpoint(dir=None, model=TableModel(probs), config=cfg, tokenizer=tok, info={})


@pytest.mark.parametrize("block_size", [1, 2, 8])
def test_bits_per_byte_by_hand(block_size):
    # "aéa" is predicted from end-of-text: -log2 p = 1 (a|eot) + 2 (é|a) + 1 (a|é) = 4 bits in total,
    # over 3 tokens, 3 characters and 4 UTF-8 bytes. The window length must not change any of it.
    result = evaluate_text(table_checkpoint(block_size), "aéa")
    assert (result.tokens, result.chars, result.bytes) == (3, 3, 4)
    assert result.loss == pytest.approx(4 * math.log(2) / 3)
    assert result.bits_per_char == pytest.approx(4 / 3)
    assert result.bits_per_byte == pytest.approx(1.0)
    assert result.perplexity == pytest.approx(2 ** (4 / 3))
    # per-token losses are ln2 * [1, 2, 1]: sample std ln2 * sqrt(1/3)
    assert result.loss_ci == pytest.approx(1.96 * math.log(2) * math.sqrt(1 / 3) / math.sqrt(3))
    assert result.per_byte_ci() == pytest.approx(result.loss_ci * 3 / (math.log(2) * 4))


def test_end_of_text_separators_are_predicted_but_not_counted_as_text():
    ckpt = table_checkpoint(4)
    # two documents "a" and "é": eot a eot é -> predictions a|eot, eot|a, é|eot
    result, losses, _ = evaluate_ids(ckpt, np.array([0, 2, 1]), "two documents")
    assert (result.tokens, result.chars, result.bytes) == (3, 2, 3)
    assert result.nats == pytest.approx(-math.log(0.5) - math.log(0.5) - math.log(0.25))
    assert losses.tolist() == pytest.approx([math.log(2), math.log(2), math.log(4)])


def test_every_token_is_predicted_once_in_non_overlapping_windows(tiny_config):
    from gptlab.models import GPT

    torch.manual_seed(0)
    model = GPT(tiny_config).eval()
    ids = torch.randint(0, tiny_config.vocab_size, (2 * 16 + 6,))  # two whole windows and a tail of 5
    losses, positions = token_losses(model, ids, block_size=16, batch_size=1)
    assert len(losses) == len(ids) - 1
    assert positions.tolist() == list(range(16)) * 2 + list(range(5))
    with torch.no_grad():  # the reference: the model's own loss on each window
        for start, length in ((0, 16), (16, 16), (32, 5)):
            _, loss = model(ids[None, start : start + length], ids[None, start + 1 : start + length + 1])
            torch.testing.assert_close(losses[start : start + length].mean(), loss)


def test_eval_measures_what_the_trainer_estimates(tiny_run):
    ckpt = load_checkpoint(tiny_run)
    data = TokenData(ckpt.info["data"]["dir"])
    cfg = ckpt.config
    # Same function: on the trainer's own batches, the per-token losses average to its estimate.
    gen = torch.Generator().manual_seed(cfg.train.seed + 1)
    batches = [
        data.get_batch("val", cfg.train.batch_size, cfg.model.block_size, gen, torch.device("cpu"))
        for _ in range(cfg.train.eval_iters)
    ]
    ours = sum(batch_token_losses(ckpt.model, x, y).mean().item() for x, y in batches) / len(batches)
    assert estimate_loss(ckpt.model, data, cfg, torch.device("cpu"), splits=("val",))["val"] == pytest.approx(
        ours, abs=1e-6
    )
    # Same quantity: many random windows estimate what the whole split measures, within the interval.
    cfg.train.eval_iters = 200
    estimate = estimate_loss(ckpt.model, data, cfg, torch.device("cpu"), splits=("val",))["val"]
    result = evaluate_split(ckpt, "val")
    assert result.tokens == len(data.splits["val"])
    assert abs(estimate - result.loss) < max(2 * result.loss_ci, 0.02)
    assert abs(ckpt.info["val_loss"] - result.loss) < 0.25  # the trainer's own 2-batch estimate is noisier


def test_eval_from_the_command_line(tiny_run, tmp_path, capsys):
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("The ghost of the king speaks at night.\n")
    assert main(["eval", str(tiny_run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "val split of" in out and "bits per byte" in out and "the trainer's estimate" in out
    assert main(["eval", str(tiny_run), "--text", str(held_out), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    ckpt = load_checkpoint(tiny_run)
    expected = evaluate_text(ckpt, held_out.read_text(), str(held_out))
    assert f"bits per byte  {expected.bits_per_byte:.4f}" in out and f"{expected.tokens:,} tokens" in out


def test_eval_errors_are_one_line(tiny_run, tmp_path, capsys):
    unknown = tmp_path / "greek.txt"
    unknown.write_text("λόγος")
    assert main(["eval", str(tiny_run), "--text", str(unknown)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not in this model's vocabulary" in err
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["eval", str(tiny_run), "--data", str(tmp_path / "gone")]) == 2
    assert "is gone" in capsys.readouterr().err


def test_a_sharded_split_is_evaluated_whole(tiny_run, tmp_path):
    from gptlab.data.prepare import prepare

    ckpt = load_checkpoint(tiny_run)
    whole = evaluate_split(ckpt, "val")
    sharded = tmp_path / "sharded"
    meta = prepare([str(tiny_run.parent / "corpus.txt")], sharded, shard_tokens=500)
    assert len(meta["shards"]["val"]) > 1
    result = evaluate_split(ckpt, "val", sharded)
    assert (result.tokens, result.chars, result.bytes) == (whole.tokens, whole.chars, whole.bytes)
    assert result.loss == pytest.approx(whole.loss, abs=1e-6)
    assert evaluate_split(ckpt, "val", max_tokens=100).tokens == 100


def test_word_tokenizer_characters_come_from_the_text_not_the_decoding(corpus_file, tmp_path):
    from gptlab.config import build_config
    from gptlab.data.prepare import prepare
    from gptlab.training.trainer import train

    corpus_file.write_text(corpus_file.read_text().replace(" ", "  "))  # decode would give single spaces back
    meta = prepare([str(corpus_file)], tmp_path / "data", "word")
    train(
        build_config("tiny", {"max_iters": 2, "eval_interval": 2, "eval_iters": 1, "device": "cpu"}),
        tmp_path / "data",
        tmp_path / "run",
    )
    result = evaluate_split(load_checkpoint(tmp_path / "run"), "val")
    assert result.chars == meta["sizes"]["val_chars"]
    assert result.tokens == meta["sizes"]["val_tokens"]
