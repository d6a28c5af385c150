"""The W&B sweep file: loading, W&B's validator, command-line shrinking, and the run list of grid / random."""

from __future__ import annotations

import copy
import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from mmrep.errors import MmrepError

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]


@dataclass
class Sweep:
    program: str
    method: str
    parameters: dict[str, dict[str, Any]]
    command: list[str]
    metric: dict[str, str]
    run_cap: int | None = None
    raw: dict[str, Any] | None = None  # the whole (possibly shrunk) file, for W&B's validator


def wandb_check(raw: dict[str, Any]) -> list[str]:
    """Problems W&B finds in a sweep config before sending it to the server (empty = passes).

    `wandb sweep FILE` runs `_validate_config_and_fill_distribution` (ambiguous min/max bounds raise); the
    JSON-schema check of the optional `sweeps` package (wandb[sweeps], the local controller's) runs too
    when that package is installed. The server-side checks cannot run offline."""
    from wandb.apis.public.sweeps import _validate_config_and_fill_distribution

    problems: list[str] = []
    try:
        _validate_config_and_fill_distribution(raw)
    except ValueError as e:
        problems.append(str(e))
    try:
        import sweeps  # noqa: F401  (wandb[sweeps]; not a dependency of mmrep)
    except ImportError:
        return problems
    problems += list(sweeps.schema_violations_from_proposed_config(raw))
    return problems


def parse_raw(raw: Any, where: str) -> Sweep:
    if not isinstance(raw, dict):
        raise MmrepError(f"sweep file {where} must hold a mapping (W&B sweep format)")
    for key in ("program", "method", "parameters"):
        if key not in raw:
            raise MmrepError(f"sweep file {where} lacks '{key}' (W&B sweep format)")
    if raw["method"] not in ("grid", "random"):
        raise MmrepError(f"sweep method {raw['method']!r} runs only on the W&B server; use grid or random offline")
    if not isinstance(raw["parameters"], dict) or not raw["parameters"]:
        raise MmrepError(f"sweep file {where}: 'parameters' must map parameter names to specs")
    for name, spec in raw["parameters"].items():
        if not isinstance(spec, dict) or not ({"value", "values", "min", "max"} & set(spec)):
            raise MmrepError(f"sweep parameter '{name}' needs value, values or min/max")
        if "values" in spec and (not isinstance(spec["values"], list) or not spec["values"]):
            raise MmrepError(f"sweep parameter '{name}': values must be a non-empty list")
        if raw["method"] == "grid" and "values" not in spec and "value" not in spec:
            raise MmrepError(f"sweep parameter '{name}': grid search needs 'values' or 'value'")
    problems = wandb_check(raw)
    if problems:
        raise MmrepError(f"sweep file {where} fails W&B's check: {problems[0]}")
    command = raw.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or not all(isinstance(c, (str, int, float)) for c in command):
        raise MmrepError(f"sweep file {where}: 'command' must be a list of strings such as ${{program}} / ${{args}}")
    return Sweep(program=str(raw["program"]), method=raw["method"], parameters=raw["parameters"],
                 command=[str(c) for c in command], metric=raw.get("metric") or {}, run_cap=raw.get("run_cap"),
                 raw=raw)


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> Sweep:
    """A sweep file, shrunk / changed by `--parameters.NAME.values=[...]`-style overrides, validated."""
    from mmrep.config import parse_override, set_dotted

    path = Path(path)
    if not path.is_file():
        raise MmrepError(f"sweep file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise MmrepError(f"sweep file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        if parts[0] == "parameters":
            # a parameter name holds dots itself (optim.total_steps): the last part is the spec field
            if len(parts) < 3:
                raise MmrepError(f"override {item!r}: use --parameters.NAME.values=[...] (or .value=X)")
            name, spec_key = ".".join(parts[1:-1]), parts[-1]
            params = raw.setdefault("parameters", {})
            spec = params.setdefault(name, {})
            if spec_key in ("values", "value"):  # one replaces the other
                spec.pop("values" if spec_key == "value" else "value", None)
            spec[spec_key] = value
        elif isinstance(raw, dict):
            set_dotted(raw, key, value)
    return parse_raw(raw, str(path))


def expand(sweep: Sweep, seed: int = 0, count: int | None = None) -> list[dict[str, Any]]:
    """Parameter sets of the sweep in file order: the full grid (capped), or `count` random draws."""
    names = list(sweep.parameters)
    if sweep.method == "grid":
        choices = [_grid_values(sweep.parameters[n]) for n in names]
        runs = [dict(zip(names, combo)) for combo in itertools.product(*choices)]
    else:
        rng = random.Random(seed)
        n = count or sweep.run_cap or 10
        runs = [{name: _draw(sweep.parameters[name], rng) for name in names} for _ in range(n)]
    cap = count or sweep.run_cap
    return runs[:cap] if cap else runs


def pick(runs: list[dict[str, Any]], max_runs: int) -> list[dict[str, Any]]:
    """At most `max_runs` runs spread evenly over the list (first and last kept), for demos and tests."""
    if max_runs <= 0 or max_runs >= len(runs):
        return runs
    if max_runs == 1:
        return runs[:1]
    idx = sorted({round(i * (len(runs) - 1) / (max_runs - 1)) for i in range(max_runs)})
    return [runs[i] for i in idx]


def _grid_values(spec: dict[str, Any]) -> list[Any]:
    return list(spec["values"]) if "values" in spec else [spec["value"]]


def _draw(spec: dict[str, Any], rng: random.Random) -> Any:
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(list(spec["values"]))
    lo, hi = spec["min"], spec["max"]
    dist = spec.get("distribution", "int_uniform" if isinstance(lo, int) and isinstance(hi, int) else "uniform")
    if dist == "int_uniform":
        return rng.randint(lo, hi)
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if dist == "uniform":
        return rng.uniform(lo, hi)
    raise MmrepError(f"sweep distribution {dist!r} is not supported offline (use uniform, int_uniform, log_uniform_values)")
