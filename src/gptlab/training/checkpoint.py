"""Checkpoints: a directory holding everything needed to use or continue a model.

    model.safetensors   weights (safetensors: no code can hide in it)
    config.json         the effective RunConfig, the tokenizer kind, data identity, step and losses
    tokenizer.json      the tokenizer file, copied from the data directory (self-contained)
    trainer.pt          optimizer state, step and RNG states (tensors and numbers only,
                        read with torch.load(weights_only=True)); only in resumable checkpoints

A checkpoint is written into a temporary sibling and renamed into place, so a reader never sees
a half-written one.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from gptlab.config import RunConfig
from gptlab.errors import GptlabError
from gptlab.models import GPT, build_model
from gptlab.tokenizers import Tokenizer, load_tokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINER_STATE = "trainer.pt"


@dataclass
class Checkpoint:
    dir: Path
    model: GPT
    config: RunConfig
    tokenizer: Tokenizer
    info: dict[str, Any]  # the rest of config.json: tokenizer, data, step, losses


def save_checkpoint(
    ckpt_dir: Path,
    model: GPT,
    cfg: RunConfig,
    info: dict[str, Any],
    files: list[Path] = (),
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ckpt_dir.name}.", dir=ckpt_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        save_model(model, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps({"run": cfg.to_dict(), **info}, indent=2) + "\n")
        for f in files:
            shutil.copy2(f, tmp / Path(f).name)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)
        old = None
        if ckpt_dir.exists():
            old = ckpt_dir.with_name(f".{ckpt_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(ckpt_dir, old)
        os.replace(tmp, ckpt_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ckpt_dir


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory, or a run directory (its best checkpoint, else its last)."""
    path = Path(path)
    for candidate in (path, path / "best", path / "last"):
        if (candidate / CONFIG).is_file() and (candidate / WEIGHTS).is_file():
            return candidate
    if not path.exists():
        raise GptlabError(f"{path}: no such checkpoint or run directory")
    raise GptlabError(f"{path} holds no checkpoint ({WEIGHTS} + {CONFIG}); point at a run directory or a checkpoint inside it")


def read_info(ckpt_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(ckpt_dir) / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GptlabError(f"{Path(ckpt_dir) / CONFIG} is corrupt; use another checkpoint") from None


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> Checkpoint:
    ckpt_dir = resolve_checkpoint(path)
    info = read_info(ckpt_dir)
    cfg = RunConfig.from_dict(info.pop("run"))
    model = build_model(cfg.model)
    try:
        missing, unexpected = load_model(model, str(ckpt_dir / WEIGHTS), strict=False, device=str(device))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise GptlabError(f"{ckpt_dir / WEIGHTS} cannot be read ({str(e).splitlines()[0]}); the file is truncated or corrupt") from None
    if missing or unexpected:
        raise GptlabError(f"{ckpt_dir / WEIGHTS} does not match its config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.to(device).eval()
    tokenizer = load_tokenizer(info["tokenizer"]["kind"], ckpt_dir)
    return Checkpoint(dir=ckpt_dir, model=model, config=cfg, tokenizer=tokenizer, info=info)


def load_trainer_state(ckpt_dir: Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / TRAINER_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GptlabError(f"{path} is missing: this checkpoint cannot be resumed") from None
    except pickle.UnpicklingError:  # the weights-only unpickler met something besides tensors and plain values
        raise GptlabError(
            f"{path} was refused: it holds Python objects other than tensors and numbers, which could run code "
            "when unpickled (or it is corrupt); use a checkpoint gptlab wrote"
        ) from None
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise GptlabError(f"{path} cannot be loaded safely ({str(e).splitlines()[0][:120]}); it is corrupt or not a gptlab file") from None
