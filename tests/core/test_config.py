from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from mmrep import config
from mmrep.errors import MmrepError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    kind: Literal["adamw", "sgd"] = "adamw"


@dataclass
class Run:
    name: str = "x"
    steps: int = 10
    optim: Optim = field(default_factory=Optim)
    note: Optional[str] = None


def test_yaml_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 5\noptim: {lr: 0.1}\n")
    (tmp_path / "run.yaml").write_text("_base_: base.yaml\nname: r1\noptim: {kind: sgd}\n")
    cfg = config.load(Run, tmp_path / "run.yaml", ["--optim.lr=2e-4", "--steps=7", "--note=hi"])
    assert cfg == Run(name="r1", steps=7, optim=Optim(lr=2e-4, kind="sgd"), note="hi")


def test_unknown_key_named():
    with pytest.raises(MmrepError, match="unknown config key 'optim.lrr'"):
        config.load(Run, None, ["--optim.lrr=1"])


@pytest.mark.parametrize("override,key", [("--steps=abc", "steps"), ("--optim.kind=adam", "optim.kind"),
                                          ("--optim.betas=3", "optim.betas"), ("--name=[1]", "name")])
def test_wrong_type_named(override, key):
    with pytest.raises(MmrepError, match=f"'{key}'"):
        config.load(Run, None, [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(MmrepError, match="not found"):
        config.load(Run, tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(MmrepError, match="not valid YAML"):
        config.load(Run, tmp_path / "bad.yaml")


def test_save_resolved_roundtrip(tmp_path):
    cfg = config.load(Run, None, ["--optim.lr=0.5"])
    path = config.save_resolved(cfg, tmp_path)
    assert config.load(Run, path) == cfg


def test_split_config_args():
    cfg, ov, rest = config.split_config_args(["--config", "a.yaml", "--train.lr=1", "--resume", "latest"])
    assert (cfg, ov, rest) == ("a.yaml", ["--train.lr=1"], ["--resume", "latest"])
