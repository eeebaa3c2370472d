"""The on-disk formats every stage after training reads: the run directory and its checkpoints.

A run directory (`gptlab train --out RUN`), its layout owned by RunDir:

    config.json         the run's RunConfig, its data directory and where it started from
    metrics.jsonl       one JSON object per log line or evaluation (training.metrics writes it)
    samples.txt         text sampled at each evaluation
    loss.png            the loss curves
    best/  last/        checkpoints: the lowest val loss, and the newest (resumable)
    checkpoints/        with keep_last > 1: the newest saved last/ checkpoints, step-NNNNNNNN
    tensorboard/        with --tensorboard true
    report.md           written by `gptlab report`

A checkpoint: a directory holding everything needed to use or continue a model.

    model.safetensors   weights (safetensors: no code can hide in it)
    config.json         the effective RunConfig, the tokenizer kind, data identity, step and losses
    tokenizer.json      the tokenizer file, copied from the data directory (self-contained)
    trainer.pt          optimizer state, step and RNG states (tensors and numbers only,
                        read with torch.load(weights_only=True)); only in resumable checkpoints

    checksums.json      the SHA-256 of every file above, checked on every load

A checkpoint is written into a temporary sibling, fsynced and renamed into place (gptlab.atomic),
so a crash at any moment leaves a complete checkpoint, never a half-written one.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from gptlab.atomic import CHECKSUMS, atomic_directory, complete_directory, remove_directory, verify_directory
from gptlab.config import RunConfig, json_kind, load_preset
from gptlab.errors import GptlabError
from gptlab.models import GPT, build_model
from gptlab.tokenizers import Tokenizer, load_tokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINER_STATE = "trainer.pt"


@dataclass(frozen=True)
class RunDir:
    """The names inside a run directory; the one place that knows them."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples(self) -> Path:
        return self.path / "samples.txt"

    @property
    def loss_plot(self) -> Path:
        return self.path / "loss.png"

    @property
    def best(self) -> Path:
        return self.path / "best"

    @property
    def last(self) -> Path:
        return self.path / "last"

    @property
    def history(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def report(self) -> Path:
        return self.path / "report.md"

    def is_run(self) -> bool:
        return self.config.is_file()

    def read_record(self) -> dict[str, Any]:
        """The run's config.json: {"run": RunConfig dict, "data_dir": ..., ...}."""
        try:
            record = json.loads(self.config.read_text())
        except FileNotFoundError:
            raise GptlabError(
                f"{self.path} is not a gptlab run (no {CONFIG}); give the run directory that `gptlab train --out` wrote"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise GptlabError(f"{self.config} is not valid JSON; the run directory is damaged") from None
        if not isinstance(record, dict) or not isinstance(record.get("run"), dict):
            raise GptlabError(
                f'{self.config} is not a gptlab run config (no "run" object); the run directory is damaged'
            )
        return record


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
    with atomic_directory(ckpt_dir) as tmp:
        save_model(model, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps({"run": cfg.to_dict(), **info}, indent=2) + "\n")
        for f in files:
            shutil.copy2(f, tmp / Path(f).name)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)
    return ckpt_dir


def keep_history(last_dir: Path, step: int, keep_last: int) -> None:
    """With keep_last > 1, RUN/checkpoints/step-NNNNNNNN holds each saved last/ checkpoint (hard links,
    so no extra space while they are the same files), the newest keep_last of them kept."""
    if keep_last <= 1:
        return
    history = RunDir(Path(last_dir).parent).history
    with atomic_directory(history / f"step-{step:08d}") as tmp:
        for f in Path(last_dir).iterdir():
            if f.name != CHECKSUMS:
                try:
                    os.link(f, tmp / f.name)
                except OSError:  # a filesystem without hard links
                    shutil.copy2(f, tmp / f.name)
    for old in sorted(history.glob("step-*"))[:-keep_last]:
        remove_directory(old)


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory, or a run directory (its best checkpoint, else its last)."""
    path = Path(path)
    for candidate in (path, RunDir(path).best, RunDir(path).last):
        found = complete_directory(candidate)
        if found is not None:
            return found
    if not path.exists():
        raise GptlabError(f"{path}: no such checkpoint or run directory")
    raise GptlabError(
        f"{path} holds no checkpoint ({WEIGHTS} + {CONFIG} + {CHECKSUMS}); point at a run directory or a checkpoint "
        "inside it"
    )


def read_info(ckpt_dir: Path) -> dict[str, Any]:
    """A checkpoint's config.json: {"run": RunConfig dict, "tokenizer": {...}, step, losses, ...}."""
    path = Path(ckpt_dir) / CONFIG
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GptlabError(f"{path} is corrupt; use another checkpoint") from None
    if not isinstance(info, dict):
        raise GptlabError(f"{path} holds {json_kind(info)} where a checkpoint's config object belongs; it is damaged")
    if "run" not in info:
        raise GptlabError(f"{path} has no 'run' object (the model's config); the checkpoint is damaged, use another")
    expected = {"run": dict, "tokenizer": dict, "data": dict, "step": int, "train_loss": (int, float, type(None))}
    expected["val_loss"] = expected["train_loss"]
    for key, kind in expected.items():
        if key in info and not isinstance(info[key], kind):
            raise GptlabError(
                f"{path} holds {json_kind(info[key])} for {key!r}, where {'an object' if kind is dict else 'a number'} "
                "belongs; the checkpoint is damaged, use another"
            )
    return info


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> Checkpoint:
    ckpt_dir = resolve_checkpoint(path)
    verify_directory(ckpt_dir)
    info = read_info(ckpt_dir)
    kind = info.get("tokenizer", {}).get("kind")
    if not isinstance(kind, str):
        raise GptlabError(f"{ckpt_dir / CONFIG} does not say which tokenizer the model uses; the checkpoint is damaged")
    cfg = RunConfig.from_dict(info.pop("run"), source=str(ckpt_dir / CONFIG))
    model = build_model(cfg.model)
    weights = ckpt_dir / WEIGHTS
    try:
        with safe_open(str(weights), "pt") as f:  # the header alone: names and shapes
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise GptlabError(
            f"{weights} cannot be read ({str(e).splitlines()[0]}); the file is truncated or corrupt"
        ) from None
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    wrong = [
        f"{name} {shapes[name]} vs {expected[name]}"
        for name in shapes
        if name in expected and shapes[name] != expected[name]
    ]
    if wrong:
        raise GptlabError(
            f"{weights} does not match its config.json ({', '.join(wrong[:2])}); the checkpoint was mixed with "
            "another run's files"
        )
    missing, unexpected = load_model(model, str(weights), strict=False, device=str(device))
    if missing or unexpected:
        raise GptlabError(
            f"{weights} does not match its config.json (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.to(device).eval()
    tokenizer = load_tokenizer(kind, ckpt_dir)
    # what the directory holds, for the stages that compare tokenizers by file
    info["tokenizer"] = {**info["tokenizer"], "file": tokenizer.file_name, "vocab_size": tokenizer.vocab_size}
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise GptlabError(
            f"the tokenizer in {ckpt_dir} has a vocabulary of {tokenizer.vocab_size} but the model was trained with "
            f"{cfg.model.vocab_size}: it belongs to another run; copy the tokenizer of the data the model was trained "
            "on"
        )
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
        raise GptlabError(
            f"{path} cannot be loaded safely ({str(e).splitlines()[0][:120]}); it is corrupt or not a gptlab file"
        ) from None


def load_config(source: str | Path, vocab_size: int | None = None) -> RunConfig:
    """The RunConfig of a checkpoint or run directory, a config .json, a preset .yaml or a preset name."""
    path = Path(source)
    if path.is_dir():
        ckpt_dir = resolve_checkpoint(path)
        cfg = RunConfig.from_dict(read_info(ckpt_dir)["run"], source=str(ckpt_dir / CONFIG))
    elif path.suffix == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise GptlabError(
                f"{path} is not valid JSON; give a gptlab config.json, a preset or a checkpoint"
            ) from None
        if isinstance(data, dict) and "run" in data:  # a run's / checkpoint's config.json, or a bare RunConfig
            data = data["run"]
        cfg = RunConfig.from_dict(data, source=str(path))
    else:
        cfg = load_preset(str(source))
    if vocab_size is not None:
        cfg.model.vocab_size = vocab_size
    return cfg
