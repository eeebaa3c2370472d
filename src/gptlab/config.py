"""Typed configuration: dataclasses are the single source of truth.

A run's configuration is built in three layers: the dataclass defaults, a named preset
(YAML under gptlab/presets/), then `--key value` overrides. The effective result is stored
as JSON beside every checkpoint so that a run can be reproduced from its files alone.

Every numeric setting declares the values it accepts next to its default (`number(...)`), and
`check_ranges` is the one place they are checked: for the model and training configs here, and for
the sampling settings that generation, the console and the server share.
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


@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts: finite numbers between optional bounds, each bound
    included unless marked open; `whole` for settings that count things, which also stay within
    64 bits (they become tensor sizes, steps and seeds)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    whole: bool = False
    optional: bool = False  # None is accepted too (it means "off" or "all")
    note: str = ""  # what a special value means, shown when a value is refused

    def __contains__(self, value: float) -> bool:
        if not (abs(value) < 2**63 if self.whole else math.isfinite(value)):
            return False
        if self.low is not None and (value < self.low or self.low_open and value == self.low):
            return False
        return self.high is None or not (value > self.high or self.high_open and value == self.high)

    def describe(self) -> str:
        """The range with what its special values mean: 'at least 0 (0 turns clipping off)'."""
        return f"{self}{f' ({self.note})' if self.note else ''}"

    def __str__(self) -> str:
        low, high = (b if b is None or not float(b).is_integer() else int(b) for b in (self.low, self.high))
        if low is not None and high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if low is not None:
            return f"{'above' if self.low_open else 'at least'} {low}"
        if high is not None:
            return f"{'below' if self.high_open else 'at most'} {high}"
        return "a finite number"


def number(
    default: float | None,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
    whole: bool | None = None,
    optional: bool | None = None,
    note: str = "",
):
    """A dataclass field for a numeric setting with the range it accepts; whole (counts things) and
    optional (None accepted) are inferred from the default unless given."""
    rng = Range(
        low=above if above is not None else at_least,
        high=below if below is not None else at_most,
        low_open=above is not None,
        high_open=below is not None,
        whole=isinstance(default, int) if whole is None else whole,
        optional=default is None if optional is None else optional,
        note=note,
    )
    return field(default=default, metadata={"range": rng})


def check_ranges(settings: Any, name=lambda key: key) -> None:
    """Refuse, in one line, the first numeric field of the dataclass `settings` outside its declared
    range; `name` turns a field name into the name the user knows it by."""
    for f in fields(settings):
        rng: Range | None = f.metadata.get("range")
        value = getattr(settings, f.name)
        if rng is None or value is None and rng.optional:
            continue
        kind = "a whole number" if rng.whole else "a number"
        if isinstance(value, bool) or not isinstance(value, int if rng.whole else (int, float)):
            raise GptlabError(f"{name(f.name)} must be {kind}, got {value!r}")
        if value not in rng:
            finite = "a finite number " if isinstance(value, float) and not math.isfinite(value) else ""
            bits = " and below 2**63" if rng.whole and abs(value) >= 2**63 else ""
            raise GptlabError(f"{name(f.name)} must be {finite}{rng.describe()}{bits}, got {value!r}")


SEED = dict(at_least=0, at_most=2**63 - 1)  # torch seeds are 64-bit; the trainer adds the step and rank to it
MAX_THREADS = 1024


@dataclass
class ModelConfig:
    arch: str = "gpt"  # gpt | bigram (a next-token table: the baseline every model must beat)
    vocab_size: int = number(0, at_least=0, note="0: taken from the data directory at train time")
    block_size: int = number(256, at_least=1, at_most=2**24)  # context length in tokens
    n_layer: int = number(6, at_least=1, at_most=1024)  # the bound keeps a typo from a minutes-long size estimate
    n_head: int = number(6, at_least=1)
    n_kv_head: int = number(0, at_least=0, note="0: n_head")  # key/value heads; fewer than n_head: grouped-query
    n_embd: int = number(384, at_least=1)
    dropout: float = number(0.0, at_least=0.0, below=1.0)
    bias: bool = False  # biases in the linear layers and LayerNorms (GPT-2 has them)
    attention: str = "sdpa"  # sdpa | manual (the explicit per-head form, kept as the reference)
    activation: str = "gelu"  # gelu (GPT-2's tanh form) | relu | relu2 (relu squared) | swiglu
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_position: str = "pre"  # pre (GPT-2: x + f(norm(x))) | post (the 2017 transformer: norm(x + f(x)))
    positions: str = "learned"  # learned (GPT-2's wpe table) | rope (rotary, applied to queries and keys)
    # rotary base: the longest wavelength is about 2*pi*rope_theta positions
    rope_theta: float = number(10000.0, above=0.0)
    qk_norm: bool = False  # normalise each head's queries and keys before the dot product
    tie_embeddings: bool = True  # the LM head reuses the token embedding matrix (GPT-2) or has its own

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    def validate(self) -> None:
        check_ranges(self)
        _check_choice("arch", self.arch, ("gpt", "bigram"))
        if self.n_embd % self.n_head != 0:
            raise GptlabError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                f"pick e.g. n_embd {self.n_head * max(1, round(self.n_embd / self.n_head))}"
            )
        if self.n_head % self.kv_heads != 0:
            raise GptlabError(
                f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head}) so each key/value head serves "
                "the same number of query heads; 0 means n_head"
            )
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


@dataclass
class TrainConfig:
    # One optimizer step sees batch_size * grad_accum sequences of block_size tokens, however many
    # processes share the work: with N processes (torchrun) each runs grad_accum / N micro-batches.
    batch_size: int = number(12, at_least=1)  # sequences per micro-batch
    grad_accum: int = number(1, at_least=1)  # micro-batches per optimizer step; each draws a new batch
    max_iters: int = number(2000, at_least=1)  # the run's length: the lr schedule spans it
    # stop after this step (saving last/) and keep max_iters' schedule, to --resume later exactly
    stop_at: int = number(0, at_least=0, note="0: run to max_iters")
    optimizer: str = "adamw"  # adamw | muon (Muon for the blocks' 2-D matrices, AdamW for the rest)
    learning_rate: float = number(1e-3, above=0.0)  # AdamW's peak learning rate
    min_lr: float = number(1e-4, at_least=0.0)
    muon_lr: float = number(0.02, above=0.0)  # Muon's peak learning rate; the schedule scales it like learning_rate
    muon_momentum: float = number(0.95, at_least=0.0, below=1.0)
    lr_schedule: str = "cosine"  # cosine | wsd (warmup, stable, then linear decay)
    warmup_iters: int = number(100, at_least=0)
    lr_decay_iters: int = number(0, at_least=0, note="0: decay over max_iters")
    decay_fraction: float = number(0.2, at_least=0.0, at_most=1.0)  # wsd: the share of lr_decay_iters spent decaying
    weight_decay: float = number(0.1, at_least=0.0)
    beta1: float = number(0.9, at_least=0.0, below=1.0)
    beta2: float = number(0.99, at_least=0.0, below=1.0)
    grad_clip: float = number(1.0, at_least=0.0, note="0 turns clipping off")
    eval_interval: int = number(250, at_least=1)
    eval_iters: int = number(200, at_least=1)
    log_interval: int = number(10, at_least=1)
    # also write last/ every this many steps; 0: only at evaluations
    checkpoint_interval: int = number(0, at_least=0, note="0: only at evaluations")
    # text sampled at every evaluation into samples.txt; 0: none (a glimpse: `gptlab sample` writes long texts)
    sample_tokens: int = number(200, at_least=0, at_most=100_000)
    seed: int = number(1337, **SEED)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (under torchrun: cuda:LOCAL_RANK)
    dtype: str = "auto"  # auto (bf16 autocast on CUDA when supported, else float32) | float32 | bfloat16 | float16
    tf32: bool = True  # CUDA: TensorFloat-32 matmuls for float32 work
    compile: bool = False  # torch.compile the model (slow start, faster steps on GPUs)
    # device peak FLOP/s for MFU; 0: known GPUs' bf16 peak, else no MFU
    peak_flops: float = number(0.0, at_least=0.0, note="0: the known peak of this GPU")
    # torch's CPU threads; 0: the cores this process may use (affinity, cgroup quota), shared among torchrun's
    threads: int = number(0, at_least=0, at_most=MAX_THREADS, note="0: the cores available")
    tensorboard: bool = False  # also log metrics to RUN/tensorboard (needs the tensorboard package)
    # resumable checkpoints kept: last/, and with N > 1 the newest N in checkpoints/
    keep_last: int = number(1, at_least=1)
    nonfinite_loss: str = "stop"  # a NaN or inf loss: stop (before the update) | skip (that step's update)
    parallel: str = "ddp"  # under torchrun: ddp (a whole model per process) | fsdp (weights and state sharded)

    def validate(self) -> None:
        check_ranges(self)
        if self.min_lr > self.learning_rate:
            raise GptlabError(f"min_lr must be in [0, learning_rate], got {self.min_lr} > {self.learning_rate}")
        if self.stop_at > self.max_iters:
            raise GptlabError(
                f"stop_at ({self.stop_at}) must not be after max_iters ({self.max_iters}): it stops a run early"
            )
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
    def from_dict(cls, d: Any, source: str = "the config") -> RunConfig:
        """A RunConfig from {"model": {...}, "train": {...}} (either may be left out: defaults);
        anything else is refused in one line that names `source` and what is wrong."""
        if not isinstance(d, dict):
            raise GptlabError(
                f"{source} holds {json_kind(d)} where an object with 'model' and 'train' sections belongs"
            )
        cfg = cls()
        for section, values in d.items():
            if section not in SECTIONS:
                raise GptlabError(
                    f"{source}: unknown config section {section!r}; expected one of {', '.join(SECTIONS)}"
                )
            if values is not None and not isinstance(values, dict):
                raise GptlabError(f"{source}: section {section!r} holds {json_kind(values)} where an object belongs")
            for key, value in (values or {}).items():
                try:
                    set_field(cfg, key, value, section=section)
                except GptlabError as e:
                    raise GptlabError(f"{source}: {e}") from None
        return cfg

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise GptlabError(f"{path} is not valid JSON") from None
        return cls.from_dict(data, source=str(path))


SECTIONS = {"model": ModelConfig, "train": TrainConfig}


def json_kind(value: Any) -> str:
    """How a config file's value reads to its author: 'a list', 'a number', ..."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return "text"
    if value is None:
        return "null"
    return "true/false" if isinstance(value, bool) else "a number"


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise GptlabError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def field_types() -> dict[str, tuple[str, type]]:
    """Every overridable key -> (section, python type). Keys are unique across sections."""
    out: dict[str, tuple[str, type]] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            out[f.name] = (section, type(getattr(cls(), f.name)))
    return out


def field_ranges() -> dict[str, Range]:
    """Every numeric key -> the Range it accepts (for --help and checks)."""
    return {f.name: f.metadata["range"] for cls in SECTIONS.values() for f in fields(cls) if "range" in f.metadata}


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
    if typ is str:
        if not isinstance(value, str):
            raise GptlabError(f"{key} expects text, got {json_kind(value)} ({value!r})")
        return value
    if isinstance(value, (dict, list, tuple)) or value is None:
        raise GptlabError(f"{key} expects {typ.__name__}, got {json_kind(value)} ({value!r})")
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
    key = key.replace("-", "_")  # max-iters as well as max_iters, like the command line's flags
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
