"""What launchers such as `wandb agent` pass: value formats, bare flags, and the per-run output folder."""

from pathlib import Path

import pytest

from mmrep import config
from mmrep.errors import MmrepError
from mmrep.train.summary import agent_output_dir, param_counts

REPO = Path(__file__).resolve().parents[2]
POSTTRAIN = str(REPO / "configs" / "train" / "posttrain-tiny.yaml")


@pytest.mark.parametrize("arg, value", [
    ("--loss.filtering", True),  # ${args_no_boolean_flags}: a true boolean as a bare flag
    ("--loss.filtering=True", True), ("--loss.filtering=true", True), ("--loss.filtering=False", False),
    ("--loss.views=['t', 'mm']", ["t", "mm"]),  # Python's str() of a list
    ("--loss.fixed_weights={'t': 1.0, 'i': 2}", {"t": 1.0, "i": 2}),  # ... of a dict
    ("--init_from=None", None), ("--optim.lr=1e-05", "1e-05"),  # floats are coerced by the typed section
])
def test_wandb_value_formats(arg, value):
    assert config.parse_override(arg)[1] == value


def test_bare_flags_are_overrides_and_invalid_forms_still_fail():
    cfg, ov, rest = config.split_config_args(["--config=a.yaml", "--loss.filtering", "--resume", "latest"])
    assert ov == ["--loss.filtering"] and rest == ["--resume", "latest"]
    with pytest.raises(MmrepError, match="--section.key=value"):
        config.parse_override("loss.filtering")


def test_train_cli_takes_wandb_agent_args(monkeypatch):
    from mmrep.train.cli import parse

    for var in ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "MMREP_RUNS_DIR"):
        monkeypatch.delenv(var, raising=False)
    argv = [f"--config={POSTTRAIN}", "--optim.total_steps=20", "--loss.filtering=False", "--loss.queue",
            "--loss.views=['t', 'i']", "--overwrite", "--optim.lr=1e-05"]
    cfg = parse(argv, stage="posttrain")
    assert cfg.output_dir == "runs/posttrain-tiny"  # a plain run keeps the config's folder
    assert (cfg.optim.total_steps, cfg.loss.filtering, cfg.loss.queue, cfg.overwrite) == (20, False, True, True)
    assert cfg.loss.views == ["t", "i"] and cfg.optim.lr == 1e-5
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    assert parse(argv, stage="posttrain").output_dir == str(Path("runs/posttrain-tiny") / "abc123")
    assert parse(argv + ["--output_dir=elsewhere"], stage="posttrain").output_dir == "elsewhere"  # explicit wins
    monkeypatch.setenv("MMREP_RUNS_DIR", "/sweeps/s1/runs")
    assert parse(argv, stage="posttrain").output_dir == "/sweeps/s1/runs/abc123"
    # `mmrep train` as a sweep command (`command: [mmrep, train, --stage=posttrain, ${args}]`)
    cfg = parse(["--stage=posttrain"] + argv)
    assert cfg.stage == "posttrain" and cfg.output_dir == "/sweeps/s1/runs/abc123"


def test_sweep_without_run_id_hashes_the_overrides():
    env = {"WANDB_SWEEP_ID": "s"}
    a = agent_output_dir("runs/x", ["--optim.total_steps=20"], env)
    assert a != agent_output_dir("runs/x", ["--optim.total_steps=40"], env) and a.startswith("runs/x/h")
    assert a == agent_output_dir("runs/x", ["--optim.total_steps=20", "--checkpoint.resume=latest"], env)
    assert agent_output_dir("runs/x", ["--a.b=1"], {}) == "runs/x"
    with pytest.raises(MmrepError, match="WANDB_RUN_ID"):
        agent_output_dir("runs/x", [], {"WANDB_RUN_ID": "../x"})


def test_param_counts_leave_out_embedding_tables():
    from torch import nn

    m = nn.Sequential(nn.Embedding(100, 8), nn.Linear(8, 4))
    m.positional_embedding = nn.Parameter(nn.init.zeros_(nn.Linear(8, 5).weight))
    assert param_counts(m) == {"params_total": 800 + 36 + 40, "params_non_embedding": 36}
