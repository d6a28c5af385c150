"""A local `wandb agent`: the same commands, built by W&B's own code, run here (optionally in parallel).

For every parameter set `wandb agent` sets WANDB_RUN_ID (and WANDB_SWEEP_ID), fills the sweep file's
`command:` macros with `wandb.sdk.launch.sweeps.utils.create_sweep_command_args` (`${args}` = `--k=v`
with Python's str() of each value, `${args_no_boolean_flags}`, `${args_json}`, ...) and runs it. This
agent does exactly that, except that `${interpreter}` is this Python (the agent writes `python`) unless
`interpreter="python"` is asked for, it sets MMREP_RUNS_DIR so runs land under the sweep's folder, and
MMREP_SWEEP_ID instead of WANDB_SWEEP_ID (an online W&B run would look that sweep up on the server).
A run already finished (its summary.json exists) is not run again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mmrep.distributed import LAUNCHER_ENV
from mmrep.sweeps.spec import Sweep


def wandb_command(sweep: Sweep, params: dict[str, Any], interpreter: str = "python",
                  args_json_file: str = "") -> list[str]:
    """The argv `wandb agent` runs for `params` (wandb_agent.Agent._command_run, via W&B's functions)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    command = sweep_utils.create_sweep_command(list(sweep.command))
    sweep_vars: dict[str, Any] = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars["interpreter"] = [interpreter]
    sweep_vars["program"] = [sweep.program]
    sweep_vars["args_json_file"] = [args_json_file]
    if platform.system() != "Windows":
        sweep_vars["env"] = ["/usr/bin/env"]
    out: list[str] = []
    for c in command:
        c = str(c)
        if c.startswith("${") and c.endswith("}"):
            out += sweep_vars.get(c[2:-1]) or []
        else:
            out.append(c)
    return out


def run_id_for(params: dict[str, Any]) -> str:
    """A stable W&B-style run id from the parameters: rerunning (or shrinking) the sweep finds its finished runs."""
    return "r" + hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:9]


def sweep_id_for(sweep: Sweep) -> str:
    return "local-" + hashlib.sha256(json.dumps(sweep.raw, sort_keys=True, default=str).encode()).hexdigest()[:8]


@dataclass
class PlannedRun:
    index: int
    run_id: str
    params: dict[str, Any]
    command: list[str]
    run_dir: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)


def plan(sweep: Sweep, runs: list[dict[str, Any]], out: Path, interpreter: str = sys.executable) -> list[PlannedRun]:
    sweep_id = sweep_id_for(sweep)
    planned = []
    for i, params in enumerate(runs):
        rid = run_id_for(params)
        json_file = out / "args" / f"config-{rid}.json"
        cmd = wandb_command(sweep, params, interpreter, str(json_file))
        # no WANDB_SWEEP_ID: an online W&B run would look for the sweep on the server (it exists only here)
        env = {"WANDB_RUN_ID": rid, "MMREP_SWEEP_ID": sweep_id, "MMREP_RUNS_DIR": str(out / "runs")}
        run_dir = Path(str(params["output_dir"])) if "output_dir" in params else out / "runs" / rid
        planned.append(PlannedRun(i, rid, params, cmd, run_dir, out / "logs" / f"{rid}.log", env))
    return planned


def execute(planned: list[PlannedRun], parallel: int = 1, gpus: list[str] | None = None,
            base_env: Mapping[str, str] | None = None, echo=print) -> list[dict[str, Any]]:
    """Run the planned commands, at most `parallel` at once (one per GPU when `gpus` are named).

    Returns one record per run: run id, params, command, exit code, seconds, and its summary.json."""
    from mmrep.train.summary import read_summary

    base = dict(os.environ if base_env is None else base_env)
    slots = list(gpus) if gpus else [None] * max(1, parallel)
    free = list(range(len(slots)))
    running: dict[int, tuple[PlannedRun, subprocess.Popen, float, Any]] = {}
    records: dict[int, dict[str, Any]] = {}
    queue = list(planned)
    while queue or running:
        while queue and free:
            pr = queue.pop(0)
            done = read_summary(pr.run_dir)
            if done is not None:
                echo(f"[{pr.run_id}] already finished; skipped")
                records[pr.index] = _record(pr, 0, 0.0, done, skipped=True)
                continue
            slot = free.pop(0)
            env = {**base, **pr.env}
            if slots[slot] is not None:
                env["CUDA_VISIBLE_DEVICES"] = slots[slot]
            for k in LAUNCHER_ENV:
                env.pop(k, None)  # each run is its own process group
            pr.log.parent.mkdir(parents=True, exist_ok=True)
            _write_args_json(pr)
            log = open(pr.log, "w")
            echo(f"[{pr.run_id}] " + " ".join(pr.command))
            proc = subprocess.Popen(pr.command, env=env, stdout=log, stderr=subprocess.STDOUT)
            running[slot] = (pr, proc, time.perf_counter(), log)
        time.sleep(0.2)
        for slot, (pr, proc, t0, log) in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            log.close()
            del running[slot]
            free.append(slot)
            free.sort()
            seconds = time.perf_counter() - t0
            records[pr.index] = _record(pr, code, seconds, read_summary(pr.run_dir) if code == 0 else None)
            echo(f"[{pr.run_id}] exit {code} after {seconds:.0f} s" + ("" if code == 0 else f"; log: {pr.log}"))
    return [records[i] for i in sorted(records)]


def _write_args_json(pr: PlannedRun) -> None:
    # `${args_json_file}`: the agent writes the parameters there before starting the run
    if any(c.endswith(f"config-{pr.run_id}.json") for c in pr.command):
        path = pr.log.parent.parent / "args" / f"config-{pr.run_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(pr.params))


def _record(pr: PlannedRun, code: int, seconds: float, summary: dict | None, skipped: bool = False) -> dict[str, Any]:
    return {"run_id": pr.run_id, "params": pr.params, "command": pr.command, "returncode": code,
            "seconds": round(seconds, 1), "skipped": skipped, "run_dir": str(pr.run_dir), "summary": summary}
