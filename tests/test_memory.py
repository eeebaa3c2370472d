import os

import pytest
import torch

from gptlab.config import build_config
from gptlab.errors import GptlabError
from gptlab.models.info import training_memory
from gptlab.training import memory
from gptlab.training.memory import check_memory


def test_a_configuration_bigger_than_free_memory_is_refused_before_allocation(monkeypatch):
    cfg = build_config("tiny", {"vocab_size": 65})
    need = training_memory(cfg, cfg.train.batch_size)["total"]
    monkeypatch.setattr(memory, "available_memory", lambda device: need + 1)
    assert check_memory(cfg, torch.device("cpu"))["total"] == need
    monkeypatch.setattr(memory, "available_memory", lambda device: need - 1)
    with pytest.raises(GptlabError, match=r"does not fit.*lower --batch-size"):
        check_memory(cfg, torch.device("cpu"))


def test_free_cpu_memory_is_read_from_the_system():
    free = memory.available_memory(torch.device("cpu"))
    assert 0 < free <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
