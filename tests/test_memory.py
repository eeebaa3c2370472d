import os

import pytest
import torch

from gptlab.config import ModelConfig, build_config
from gptlab.errors import GptlabError
from gptlab.models import GPT
from gptlab.training import memory
from gptlab.training.memory import check_memory, count_params, estimate_training_memory


@pytest.mark.parametrize("bias", [False, True])
def test_parameter_count_from_the_config_matches_the_model(bias):
    cfg = ModelConfig(vocab_size=65, block_size=24, n_layer=3, n_head=4, n_embd=32, bias=bias)
    assert count_params(cfg) == GPT(cfg).num_params(non_embedding=False)


def test_estimate_grows_with_batch_and_explicit_attention_adds_t_squared():
    cfg = build_config("tiny", {"vocab_size": 65, "batch_size": 8})
    small = estimate_training_memory(cfg)
    cfg.train.batch_size = 16
    double = estimate_training_memory(cfg)
    assert double.state_bytes == small.state_bytes == 16 * small.params
    assert double.activation_bytes == 2 * small.activation_bytes
    cfg.model.attention = "manual"
    manual = estimate_training_memory(cfg)
    T, H, L = cfg.model.block_size, cfg.model.n_head, cfg.model.n_layer
    assert manual.activation_bytes - double.activation_bytes == 4 * L * 2 * 16 * H * T * T


def test_a_configuration_bigger_than_free_memory_is_refused_before_allocation(monkeypatch):
    cfg = build_config("tiny", {"vocab_size": 65})
    need = estimate_training_memory(cfg).total_bytes
    monkeypatch.setattr(memory, "available_memory", lambda device: need + 1)
    assert check_memory(cfg, torch.device("cpu")).total_bytes == need
    monkeypatch.setattr(memory, "available_memory", lambda device: need - 1)
    with pytest.raises(GptlabError, match=r"does not fit.*lower --batch_size"):
        check_memory(cfg, torch.device("cpu"))


def test_free_cpu_memory_is_read_from_the_system():
    free = memory.available_memory(torch.device("cpu"))
    assert 0 < free <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
