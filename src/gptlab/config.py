"""Typed configuration: dataclasses are the single source of truth.

A run's configuration is built in three layers: the dataclass defaults, a named preset
(YAML under gptlab/presets/), then `--key value` overrides. The effective result is stored
as JSON beside every checkpoint so that a run can be reproduced from its files alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gptlab.errors import GptlabError


@dataclass
class ModelConfig:
    arch: str = "gpt"  # gpt | bigram (a next-token table: the baseline every model must beat)
    vocab_size: int = 0  # 0: taken from the data directory at train time
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int = 0  # key/value heads; 0: n_head (plain multi-head), fewer: grouped-query attention
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = False  # biases in the linear layers and LayerNorms (GPT-2 has them)
    attention: str = "sdpa"  # sdpa | manual (the explicit per-head form, kept as the reference)
    activation: str = "gelu"  # gelu (GPT-2's tanh form) | relu | relu2 (relu squared) | swiglu
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_position: str = "pre"  # pre (GPT-2: x + f(norm(x))) | post (the 2017 transformer: norm(x + f(x)))
    positions: str = "learned"  # learned (GPT-2's wpe table) | rope (rotary, applied to queries and keys)
    rope_theta: float = 10000.0  # rotary base: the longest wavelength is about 2*pi*rope_theta positions
    qk_norm: bool = False  # normalise each head's queries and keys before the dot product
    tie_embeddings: bool = True  # the LM head reuses the token embedding matrix (GPT-2) or has its own

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    def validate(self) -> None:
        _check_choice("arch", self.arch, ("gpt", "bigram"))
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise GptlabError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise GptlabError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                f"pick e.g. n_embd {self.n_head * max(1, round(self.n_embd / self.n_head))}"
            )
        if self.n_kv_head < 0 or self.n_head % self.kv_heads != 0:
            raise GptlabError(
                f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head}) so each key/value head serves "
                "the same number of query heads; 0 means n_head"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise GptlabError(f"dropout must be in [0, 1), got {self.dropout}")
        _check_choice("attention", self.attention, ("sdpa", "manual"))
        _check_choice("activation", self.activation, ("gelu", "relu", "relu2", "swiglu"))
        _check_choice("norm", self.norm, ("layernorm", "rmsnorm"))
        _check_choice("norm_position", self.norm_position, ("pre", "post"))
        _check_choice("positions", self.positions, ("learned", "rope"))
        if self.positions == "rope" and (self.n_embd // self.n_head) % 2:
            raise GptlabError(
                f"rope rotates pairs of dimensions, so the head size n_embd / n_head must be even, "
                f"got {self.n_embd // self.n_head}; change n_embd or n_head"
            )
        if self.rope_theta <= 0:
            raise GptlabError(f"rope_theta must be positive, got {self.rope_theta}")


@dataclass
class TrainConfig:
    # One optimizer step sees batch_size * grad_accum sequences of block_size tokens, however many
    # processes share the work: with N processes (torchrun) each runs grad_accum / N micro-batches.
    batch_size: int = 12  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step; each draws a new batch
    max_iters: int = 2000
    optimizer: str = "adamw"  # adamw | muon (Muon for the blocks' 2-D matrices, AdamW for the rest)
    learning_rate: float = 1e-3  # AdamW's peak learning rate
    min_lr: float = 1e-4
    muon_lr: float = 0.02  # Muon's peak learning rate; the schedule scales it like learning_rate
    muon_momentum: float = 0.95
    lr_schedule: str = "cosine"  # cosine | wsd (warmup, stable, then linear decay)
    warmup_iters: int = 100
    lr_decay_iters: int = 0  # 0: decay over max_iters
    decay_fraction: float = 0.2  # wsd: the share of lr_decay_iters spent decaying at the end
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    eval_interval: int = 250
    eval_iters: int = 200
    log_interval: int = 10
    checkpoint_interval: int = 0  # also write last/ every this many steps; 0: only at evaluations
    sample_tokens: int = 200  # text sampled at every evaluation into samples.txt; 0: none
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (under torchrun: cuda:LOCAL_RANK)
    dtype: str = "auto"  # auto (bf16 autocast on CUDA when supported, else float32) | float32 | bfloat16 | float16
    tf32: bool = True  # CUDA: TensorFloat-32 matmuls for float32 work
    compile: bool = False  # torch.compile the model (slow start, faster steps on GPUs)
    peak_flops: float = 0.0  # device peak FLOP/s for MFU; 0: known GPUs' bf16 peak, else no MFU
    tensorboard: bool = False  # also log metrics to RUN/tensorboard (needs the tensorboard package)
    keep_last: int = 1  # resumable checkpoints kept: last/, and with N > 1 the newest N in checkpoints/
    nonfinite_loss: str = "stop"  # a NaN or inf loss: stop (before the update) | skip (that step's update)
    parallel: str = "ddp"  # under torchrun: ddp (a whole model per process) | fsdp (weights and state sharded)

    def validate(self) -> None:
        for name in (
            "batch_size",
            "grad_accum",
            "max_iters",
            "eval_interval",
            "eval_iters",
            "log_interval",
            "keep_last",
        ):
            if getattr(self, name) < 1:
                raise GptlabError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("learning_rate", "muon_lr"):
            if getattr(self, name) <= 0:
                raise GptlabError(f"{name} must be positive, got {getattr(self, name)}")
        if self.min_lr < 0 or self.min_lr > self.learning_rate:
            raise GptlabError(f"min_lr must be in [0, learning_rate], got {self.min_lr}")
        for name in ("warmup_iters", "lr_decay_iters", "checkpoint_interval", "sample_tokens", "peak_flops"):
            if getattr(self, name) < 0:
                raise GptlabError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise GptlabError(f"decay_fraction must be in [0, 1], got {self.decay_fraction}")
        _check_choice("optimizer", self.optimizer, ("adamw", "muon"))
        _check_choice("lr_schedule", self.lr_schedule, ("cosine", "wsd"))
        _check_choice("dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        _check_choice("nonfinite_loss", self.nonfinite_loss, ("stop", "skip"))
        _check_choice("parallel", self.parallel, ("ddp", "fsdp"))


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.model.validate()
        self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        cfg = cls()
        for section, values in d.items():
            if section not in SECTIONS:
                raise GptlabError(f"unknown config section {section!r}; expected one of {', '.join(SECTIONS)}")
            for key, value in (values or {}).items():
                set_field(cfg, key, value, section=section)
        return cfg

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


SECTIONS = {"model": ModelConfig, "train": TrainConfig}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise GptlabError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def field_types() -> dict[str, tuple[str, type]]:
    """Every overridable key -> (section, python type). Keys are unique across sections."""
    out: dict[str, tuple[str, type]] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            out[f.name] = (section, type(getattr(cls(), f.name)))
    return out


def coerce(key: str, value: Any, typ: type) -> Any:
    """Convert a YAML or command-line value to the field's type, or say what was expected."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise GptlabError(f"{key} expects true or false, got {value!r}")
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not (isinstance(value, typ) and not isinstance(value, bool)):
        try:
            value = typ(str(value))
        except ValueError:
            raise GptlabError(f"{key} expects {typ.__name__}, got {value!r}") from None
    if typ is float and not math.isfinite(value):
        raise GptlabError(f"{key} expects a finite number, got {value!r}")
    return value


def set_field(cfg: RunConfig, key: str, value: Any, section: str | None = None) -> None:
    types = field_types()
    if key not in types or (section is not None and types[key][0] != section):
        where = f" in section {section!r}" if section else ""
        raise GptlabError(f"unknown config key {key!r}{where}; `gptlab train --help` lists the keys")
    sec, typ = types[key]
    setattr(getattr(cfg, sec), key, coerce(key, value, typ))


def preset_names() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")] for p in resources.files("gptlab.presets").iterdir() if p.name.endswith(".yaml")
    )


def load_preset(name: str) -> RunConfig:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text = path.read_text()
    else:
        res = resources.files("gptlab.presets") / f"{name}.yaml"
        if not res.is_file():
            raise GptlabError(
                f"unknown preset {name!r}; available: {', '.join(preset_names())} (or a path to a .yaml file)"
            )
        text = res.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise GptlabError(f"preset {name!r} is not valid YAML: {e}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise GptlabError(f"preset {name!r} must be a mapping with 'model' and 'train' sections")
    data.pop("description", None)
    return RunConfig.from_dict(data)


def build_config(preset: str | None, overrides: dict[str, Any]) -> RunConfig:
    cfg = load_preset(preset) if preset else RunConfig()
    for key, value in overrides.items():
        set_field(cfg, key, value)
    cfg.validate()
    return cfg
