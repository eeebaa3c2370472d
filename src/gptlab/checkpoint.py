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

A sharded checkpoint (last/ of a `--parallel fsdp` run) holds the weights and the optimizer state
in torch.distributed.checkpoint's format instead of model.safetensors and trainer.pt's optimizers:

    __R_0.distcp        rank R's shard of every parameter and optimizer tensor, written by rank R
    .metadata           the index of the shards (which rows of which tensor lie in which file)

It loads on any number of processes (the shards are re-cut to fit) and into a plain model.

A checkpoint is written into a temporary sibling, fsynced and renamed into place (gptlab.atomic),
so a crash at any moment leaves a complete checkpoint, never a half-written one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import pickle
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from gptlab.atomic import CHECKSUMS, atomic_directory, complete_directory, remove_directory, verify_directory
from gptlab.config import ModelConfig, RunConfig, json_kind, load_preset
from gptlab.data.format import is_data_dir
from gptlab.device import GiB, available_memory
from gptlab.errors import GptlabError
from gptlab.models import GPT, build_model
from gptlab.models.info import build_on_meta
from gptlab.outputs import OutputKind
from gptlab.tokenizers import Tokenizer, load_tokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINER_STATE = "trainer.pt"
SHARD_INDEX = ".metadata"  # torch.distributed.checkpoint's name for it


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
        """Whether this is a run directory gptlab wrote: its config.json holds a "run" object (and it is not a
        checkpoint, whose config.json does too)."""
        try:
            record = json.loads(self.config.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(record, dict) and isinstance(record.get("run"), dict) and not (self.path / WEIGHTS).exists()

    def data_record(self, data_dir: Path) -> dict[str, str]:
        """How config.json and each checkpoint record the data directory: its absolute path, and its path
        relative to the run, so that a run moved together with its data still finds it."""
        data_dir = os.path.abspath(data_dir)  # absolute and normalised (no "..")
        return {"dir": data_dir, "from_run": os.path.relpath(data_dir, os.path.abspath(self.path))}

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


RUN_OUTPUT = OutputKind("a gptlab run", "that run", lambda path: RunDir(path).is_run(), ", or --resume it", True)


def is_checkpoint(path: Path) -> bool:
    """A checkpoint directory gptlab wrote (complete, with checksums.json)."""
    path = Path(path)
    return (path / CHECKSUMS).is_file() and (path / WEIGHTS).is_file() and RunDir(path).is_run()


CHECKPOINT_OUTPUT = OutputKind("a gptlab checkpoint", "that checkpoint", is_checkpoint)


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
        write_beside_weights(tmp, cfg, info, files, trainer_state)
    return ckpt_dir


def write_beside_weights(
    tmp: Path, cfg: RunConfig, info: dict[str, Any], files: list[Path], trainer_state: dict[str, Any] | None
) -> None:
    """What a checkpoint holds besides its weights, however they were saved: config.json, the copied files
    (the tokenizer's) and the trainer's state."""
    (tmp / CONFIG).write_text(json.dumps({"run": cfg.to_dict(), **info}, indent=2) + "\n")
    for f in files:
        shutil.copy2(f, tmp / Path(f).name)
    if trainer_state is not None:
        with open(tmp / TRAINER_STATE, "wb") as f:  # a file object: a full disk then surfaces as OSError
            torch.save(trainer_state, f)


def save_sharded_checkpoint(
    ckpt_dir: Path,
    shards: dict[str, Any],
    cfg: RunConfig,
    info: dict[str, Any],
    files: list[Path] = (),
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Collective: every process of the job calls it with its own shards (the sharded model's and
    optimizers' state dicts). Rank 0 builds the checkpoint aside, as save_checkpoint does; each rank
    writes its shard into it with torch.distributed.checkpoint (rank 0 also the index), then rank 0
    adds the rest, records every file's checksum and renames the directory into place."""
    main = dist.get_rank() == 0
    with atomic_directory(ckpt_dir) if main else contextlib.nullcontext() as tmp:
        where = [str(tmp) if main else None]
        dist.broadcast_object_list(where, src=0)
        seen = [None] * dist.get_world_size()
        dist.all_gather_object(seen, Path(where[0]).is_dir())
        if not all(seen):
            raise GptlabError(
                f"rank {seen.index(False)} cannot see {Path(ckpt_dir).parent}, where rank 0 writes: under --parallel "
                "fsdp every rank writes its shard into the run directory, so it must be on a filesystem all nodes "
                "share (docs/scaling.md)"
            )
        try:
            dcp.save(shards, storage_writer=dcp.FileSystemWriter(where[0]))  # returns once every rank has written
        except dcp.api.CheckpointException as e:
            raise GptlabError(
                f"writing the shards of {ckpt_dir} failed on rank {min(e.failures)} "
                f"({str(e.failures[min(e.failures)][0]).splitlines()[0][:160]}); the previous checkpoint is kept"
            ) from None
        if main:
            write_beside_weights(tmp, cfg, info, files, trainer_state)
    return Path(ckpt_dir)


def is_sharded(ckpt_dir: Path) -> bool:
    return (Path(ckpt_dir) / SHARD_INDEX).is_file()


class ShardIndexUnpickler(pickle.Unpickler):
    """torch.distributed.checkpoint pickles its index. This unpickler builds only what an index is
    made of (its own record classes, torch.Size, dtypes, paths), so a planted pickle cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            (module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)))
            or (module == "torch.serialization" and name == "_get_layout")
            or (module == "pathlib" and name in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"))
            or (module == "collections" and name == "OrderedDict")
        )
        if allowed:
            return super().find_class(module, name)
        if module.startswith("torch.distributed.checkpoint."):
            found = super().find_class(module, name)
            if isinstance(found, type) and (dataclasses.is_dataclass(found) or issubclass(found, enum.Enum)):
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a shard index")


def load_shards(ckpt_dir: Path, state: dict[str, Any], collective: bool) -> None:
    """Fill `state` (laid out as it was saved: plain tensors or sharded DTensors) in place from a sharded
    checkpoint, cutting the shards to this job's layout. collective: every process of the job takes part
    (a sharded model); otherwise this process reads what it needs alone."""
    index = Path(ckpt_dir) / SHARD_INDEX
    try:
        with open(index, "rb") as f:
            ShardIndexUnpickler(f).load()  # refuses anything but an index; torch's reader then reads the same bytes
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise GptlabError(
            f"{index} was refused ({str(e).splitlines()[0][:120]}): it is corrupt or holds objects that are not "
            "part of a checkpoint; use a checkpoint gptlab wrote"
        ) from None
    try:
        with warnings.catch_warnings():  # torch warns that no_dist means one process: that is the intent
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, storage_reader=dcp.FileSystemReader(str(ckpt_dir)), no_dist=not collective)
    except (dcp.api.CheckpointException, RuntimeError, ValueError, KeyError) as e:
        raise GptlabError(
            f"{ckpt_dir} does not fit this model and optimizer ({str(e).splitlines()[0][:160]}); resume with the "
            "model and --optimizer the run was trained with"
        ) from None


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


def find_data_dir(recorded: dict[str, Any], runs: list[Path], where: Path) -> Path:
    """Where a run's data directory is now: at its recorded absolute path (or, in runs written before the
    path was made absolute, relative to where train ran), else where it was relative to the run."""
    candidates = [Path(recorded["dir"])] if recorded.get("dir") else []
    if recorded.get("from_run"):
        candidates += [Path(run) / recorded["from_run"] for run in runs]
    for candidate in candidates:
        if is_data_dir(candidate):
            return candidate
    raise GptlabError(
        f"the data directory {recorded.get('dir')} recorded in {where} is gone (moved or deleted); pass --data DIR "
        "with the same data where it is now"
    )


def check_same_tokenizer(data_dir: Path, meta: dict[str, Any], ckpt_dir: Path, info: dict[str, Any]) -> None:
    """The one rule for "this data and this checkpoint share a tokenizer": the same kind, the same vocabulary
    size, and the same tokenizer file byte for byte (the vocabulary itself)."""
    ours, theirs = meta["tokenizer"], info["tokenizer"]
    files = Path(data_dir) / ours["file"], Path(ckpt_dir) / theirs.get("file", "")
    for file in files:
        if not file.is_file():
            raise GptlabError(f"the tokenizer file {file} is missing; prepare the data again or use another checkpoint")
    if (ours["kind"], ours["vocab_size"]) != (theirs["kind"], theirs["vocab_size"]) or (
        files[0].read_bytes() != files[1].read_bytes()
    ):
        raise GptlabError(
            f"{data_dir} was prepared with another tokenizer than {ckpt_dir} ({ours['kind']}, vocab "
            f"{ours['vocab_size']} vs {theirs['kind']}, vocab {theirs['vocab_size']}); use data prepared with the "
            "checkpoint's tokenizer"
        )


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory, or a run directory (its best checkpoint, else its last)."""
    path = Path(path)
    for candidate in (path, RunDir(path).best, RunDir(path).last):
        found = complete_directory(candidate)
        if found is not None and ((found / WEIGHTS).is_file() or is_sharded(found)):  # not a data directory
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


def weight_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from a safetensors file's header alone."""
    try:
        with safe_open(str(weights), "pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise GptlabError(
            f"{weights} cannot be read ({str(e).splitlines()[0]}); the file is truncated or corrupt"
        ) from None


def check_weights_fit(cfg: ModelConfig, shapes: dict[str, tuple[int, ...]], weights: Path, device) -> None:
    """Before a model is built from `cfg`: the weights file must hold tensors of the shapes `cfg` makes,
    and the model must fit in the device's free memory. Compared on the meta device: nothing allocated."""
    model = build_on_meta(cfg)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    wrong = [
        f"{name} {shape} vs {expected[name]}" for name, shape in shapes.items() if expected.get(name, shape) != shape
    ]
    if wrong:
        raise GptlabError(
            f"{weights} does not match its config.json ({', '.join(wrong[:2])}); the weights and the config come "
            "from different models"
        )
    need = sum(p.numel() for p in model.parameters()) * 4  # float32
    free = available_memory(torch.device(device))
    if free is not None and need > free:
        raise GptlabError(
            f"the model in {weights.parent} needs {need / GiB:,.1f} GiB but {free / GiB:,.1f} GiB is free on "
            f"{device}; free some memory or use a device with more"
        )


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> Checkpoint:
    ckpt_dir = resolve_checkpoint(path)
    verify_directory(ckpt_dir)
    info = read_info(ckpt_dir)
    kind = info.get("tokenizer", {}).get("kind")
    if not isinstance(kind, str):
        raise GptlabError(f"{ckpt_dir / CONFIG} does not say which tokenizer the model uses; the checkpoint is damaged")
    cfg = RunConfig.from_dict(info.pop("run"), source=str(ckpt_dir / CONFIG))
    if is_sharded(ckpt_dir):  # a --parallel fsdp last/: the weights are in the shards
        check_weights_fit(cfg.model, {}, ckpt_dir / WEIGHTS, device)  # the memory it takes
        model = build_model(cfg.model)
        load_shards(ckpt_dir, {"model": model.state_dict()}, collective=False)
        return finish_loading(ckpt_dir, model, cfg, info, device)
    weights = ckpt_dir / WEIGHTS
    check_weights_fit(cfg.model, weight_shapes(weights), weights, device)
    model = build_model(cfg.model)
    missing, unexpected = load_model(model, str(weights), strict=False, device=str(device))
    if missing or unexpected:
        raise GptlabError(
            f"{weights} does not match its config.json (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return finish_loading(ckpt_dir, model, cfg, info, device)


def finish_loading(ckpt_dir: Path, model: GPT, cfg: RunConfig, info: dict[str, Any], device) -> Checkpoint:
    model.to(device).eval()
    tokenizer = load_tokenizer(info["tokenizer"]["kind"], ckpt_dir)
    # what the directory holds, for the stages that compare tokenizers by file
    info["tokenizer"] = {**info["tokenizer"], "file": tokenizer.file_name, "vocab_size": tokenizer.vocab_size}
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise GptlabError(
            f"the tokenizer in {ckpt_dir} has a vocabulary of {tokenizer.vocab_size} but the model was trained with "
            f"{cfg.model.vocab_size}: it belongs to another run; copy the tokenizer of the data the model was trained "
            "on"
        )
    return Checkpoint(dir=ckpt_dir, model=model, config=cfg, tokenizer=tokenizer, info=info)


def untrained_best(ckpt_dir: Path) -> str:
    """What to tell a user whose best/ checkpoint is the step-0 model."""
    last = Path(ckpt_dir).parent / "last"
    return (
        f"{ckpt_dir} is the step-0 model (untrained weights): the val loss never went below its first value, "
        f"so the best checkpoint is still the start; {last} holds the trained weights (give more text or train less "
        "to stop overfitting)"
    )


def is_untrained_best(ckpt: Checkpoint) -> bool:
    """A trained run's best/ that is still its step-0 model (an import is step 0 too, and is not untrained)."""
    return ckpt.info.get("step") == 0 and "imported_from" not in ckpt.info and (ckpt.dir.parent / "last").is_dir()


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
