"""Files a user hands gptlab are never unpickled as arbitrary objects: a pickle that would run code is
refused with a clear message and its code does not run."""

import ast
import os
import shutil
from pathlib import Path

import pytest
import torch

from gptlab.atomic import write_checksums
from gptlab.checkpoint import load_checkpoint, load_trainer_state, save_checkpoint
from gptlab.cli import main
from gptlab.config import RunConfig
from gptlab.errors import GptlabError
from gptlab.interop.hf import import_gpt2
from gptlab.models import GPT
from gptlab.tokenizers.char import CharTokenizer


class RunsCode:
    """Unpickling this runs a shell command that creates `marker`: the classic malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "code-ran"


@pytest.fixture
def malicious_pickle(tmp_path, marker) -> Path:
    """A torch.save file whose unpickling creates `marker`; proven live by loading it unsafely once."""
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "optimizer": RunsCode(marker)}, path)
    torch.load(path, weights_only=False)  # what an unsafe loader would do: the payload really runs
    assert marker.exists()
    marker.unlink()
    return path


@pytest.fixture
def checkpoint(tmp_path, tiny_config) -> Path:
    tok = CharTokenizer([chr(ord("a") + i) for i in range(tiny_config.vocab_size - 1)])
    model = GPT(tiny_config)
    return save_checkpoint(
        tmp_path / "ckpt",
        model,
        RunConfig(model=tiny_config),
        {"tokenizer": {"kind": "char"}},
        files=[tok.save(tmp_path)],
        trainer_state={"step": 0},
    )


def test_malicious_trainer_state_is_refused_and_does_not_run(checkpoint, malicious_pickle, marker):
    shutil.copy(malicious_pickle, checkpoint / "trainer.pt")
    with pytest.raises(GptlabError, match=r"trainer\.pt was refused: .*could run code") as err:
        load_trainer_state(checkpoint)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_pickle_in_place_of_the_weights_is_refused_and_does_not_run(checkpoint, malicious_pickle, marker, capsys):
    shutil.copy(malicious_pickle, checkpoint / "model.safetensors")
    write_checksums(checkpoint)  # a tamperer can update the checksums too: the weights must still be refused
    with pytest.raises(GptlabError, match=r"model\.safetensors cannot be read"):
        load_checkpoint(checkpoint)
    assert main(["sample", str(checkpoint), "--max-new-tokens", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.safetensors cannot be read" in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not safetensors at all\n", b"\xff" * 64])
def test_weights_that_are_not_safetensors_are_refused_cleanly(checkpoint, content):
    (checkpoint / "model.safetensors").write_bytes(content)
    write_checksums(checkpoint)
    with pytest.raises(GptlabError, match="cannot be read .*truncated or corrupt"):
        load_checkpoint(checkpoint)


def hf_dir_with(tmp_path: Path, files: dict[str, Path | bytes]) -> Path:
    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text(
        '{"model_type": "gpt2", "vocab_size": 50, "n_positions": 16, "n_embd": 16, "n_layer": 1, "n_head": 2}'
    )
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copy(content, src / name)
        else:
            (src / name).write_bytes(content)
    return src


def test_import_never_unpickles_pytorch_model_bin(tmp_path, malicious_pickle, marker):
    src = hf_dir_with(tmp_path, {"pytorch_model.bin": malicious_pickle})
    with pytest.raises(GptlabError, match="reads only safetensors .*pickle that can run code"):
        import_gpt2(src, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("weights", ["pickle", "text"])
def test_import_refuses_weights_that_are_not_safetensors(tmp_path, malicious_pickle, marker, weights, capsys):
    src = hf_dir_with(tmp_path, {"model.safetensors": malicious_pickle if weights == "pickle" else b"<html>404</html>"})
    assert main(["import-gpt2", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.safetensors is not a readable safetensors file" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_gptlab_source_never_unpickles_arbitrary_objects():
    """Every torch.load in gptlab passes weights_only=True, and nothing calls pickle or numpy's allow_pickle."""
    src = Path(__file__).resolve().parents[1] / "src" / "gptlab"
    torch_loads = 0
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            where = f"{path.relative_to(src)}:{node.lineno}"
            if name == "torch.load":
                torch_loads += 1
                assert keywords.get("weights_only") == "True", f"{where}: torch.load without weights_only=True"
            assert name not in ("pickle.load", "pickle.loads", "pickle.Unpickler"), f"{where}: {name}"
            assert keywords.get("allow_pickle") in (None, "False"), f"{where}: allow_pickle"
    assert torch_loads >= 1  # the trainer state is read this way: the scan saw it
