"""The search space: `--param KEY=KIND:ARGS` specs, parsed and checked against the config and the data
before anything trains.

    learning_rate=loguniform:1e-4:1e-2   a number between the bounds, drawn on a log scale
    dropout=uniform:0:0.2                a number between the bounds (whole numbers for int keys)
    block_size=choice:32,64,128          one of the listed values (any key; the only kind grid search takes)

KEY is any key `gptlab train` takes (`gptlab train --help`); the values are read as that key's type.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

from gptlab.config import RunConfig, coerce, field_types, set_field
from gptlab.data.batches import TokenData
from gptlab.errors import GptlabError

KINDS = ("loguniform", "uniform", "choice")
EXAMPLE = "learning_rate=loguniform:1e-4:1e-2 or block_size=choice:32,64,128"


@dataclass(frozen=True)
class Param:
    key: str
    kind: str  # loguniform | uniform | choice
    values: tuple  # choice: the values; loguniform/uniform: (low, high)

    @property
    def spec(self) -> str:
        return f"{self.key}={self.kind}:{(',' if self.kind == 'choice' else ':').join(map(str, self.values))}"

    @property
    def log(self) -> bool:
        return self.kind == "loguniform"

    def suggest(self, trial) -> Any:
        """This parameter's value for an Optuna trial (drawn by the study's sampler)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        low, high = self.values
        if isinstance(low, int):
            return trial.suggest_int(self.key, low, high, log=self.log)
        return trial.suggest_float(self.key, low, high, log=self.log)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "values": list(self.values)}


def parse_param(text: str) -> Param:
    key, eq, rest = text.partition("=")
    kind, colon, args = rest.partition(":")
    where = f"--param {text!r}"
    if not (eq and key and colon and args):
        raise GptlabError(f"{where} must look like KEY=KIND:ARGS, e.g. {EXAMPLE}")
    types = field_types()
    if key not in types:
        raise GptlabError(f"{where}: unknown config key {key!r}; `gptlab train --help` lists the keys")
    if key == "vocab_size":
        raise GptlabError(f"{where}: vocab_size comes from the data directory; sweep tokenizers with separate data")
    if kind not in KINDS:
        raise GptlabError(f"{where}: unknown kind {kind!r}; use loguniform:LOW:HIGH, uniform:LOW:HIGH or choice:A,B")
    typ = types[key][1]
    if kind == "choice":
        parts = args.split(",")
        if "" in parts:
            raise GptlabError(f"{where}: an empty value in the list; separate the values with single commas")
        values = tuple(_coerce(where, key, v, typ) for v in parts)
        if len(set(values)) < len(values):
            raise GptlabError(f"{where}: a value is listed twice; list each once")
        return Param(key, kind, values)
    if typ not in (int, float):
        raise GptlabError(f"{where}: {key} takes {typ.__name__} values, not a range; list them with choice:A,B,...")
    parts = args.split(":")
    if len(parts) != 2:
        raise GptlabError(f"{where}: {kind} takes two bounds, {kind}:LOW:HIGH")
    low, high = (_coerce(where, key, v, typ) for v in parts)
    if not low < high:
        raise GptlabError(f"{where}: the low bound must be below the high bound")
    if kind == "loguniform" and low <= 0:
        raise GptlabError(f"{where}: loguniform needs a positive low bound (a log scale has no 0); or use uniform")
    return Param(key, kind, (low, high))


def _coerce(where: str, key: str, value: str, typ: type) -> Any:
    try:
        return coerce(key, value, typ)
    except GptlabError as e:
        raise GptlabError(f"{where}: {e}") from None


def parse_space(specs: list[str], fixed: dict[str, Any]) -> list[Param]:
    """The --param specs; `fixed` are the train keys given as --key value, which no param may repeat."""
    if not specs:
        raise GptlabError(f"give at least one --param KEY=KIND:ARGS to sweep, e.g. --param {EXAMPLE.split(' or ')[0]}")
    space = [parse_param(s) for s in specs]
    keys = [p.key for p in space]
    for key in keys:
        if keys.count(key) > 1:
            raise GptlabError(f"--param {key}=... is given twice; give each key once")
        if key in fixed:
            raise GptlabError(f"{key} is both swept (--param) and fixed (--{key.replace('_', '-')}); drop one of them")
    return space


def grid(space: list[Param]) -> dict[str, list]:
    """The grid of a grid search: every key's list of values (choice params only)."""
    for p in space:
        if p.kind != "choice":
            raise GptlabError(
                f"grid search takes only choice params, and --param {p.spec} is a range; list its values "
                f"(e.g. {p.key}=choice:{p.values[0]},{p.values[1]}) or use --search random or tpe"
            )
    return {p.key: list(p.values) for p in space}


def check_space(space: list[Param], base: RunConfig, data: TokenData, every_combination: bool) -> None:
    """Every value the sweep may try must make a config the trainer accepts on this data. With
    every_combination (a grid), each combination is checked; else each param's values (its choices, or
    its two bounds) with the other keys as fixed, so a combination can still fail as its trial."""
    if every_combination:
        points = [dict(zip([p.key for p in space], combo)) for combo in itertools.product(*(p.values for p in space))]
    else:
        points = [{p.key: v} for p in space for v in p.values]
    for point in points:
        cfg = copy.deepcopy(base)
        cfg.model.vocab_size = data.vocab_size
        try:
            for key, value in point.items():
                set_field(cfg, key, value)
            cfg.validate()
            data.check_fits(cfg.model.block_size, cfg.train.batch_size)
        except GptlabError as e:
            settings = ", ".join(f"{k}={v}" for k, v in point.items())
            raise GptlabError(f"the sweep would try {settings}, which fails: {e}") from None
