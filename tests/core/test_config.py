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


def test_duplicate_keys_and_base_cycles_are_one_line_errors(tmp_path, capsys):
    from mmrep.cli import main as mmrep_main
    from mmrep.config import read_yaml

    dup = tmp_path / "dup.yaml"
    dup.write_text("optim:\n  lr: 1.0e-3\n  lr: 5.0e-3\n")
    with pytest.raises(MmrepError, match=r"dup.yaml is not valid YAML: duplicate key 'lr' \(line 3\)"):
        read_yaml(dup)
    top = tmp_path / "top.yaml"
    top.write_text("seed: 1\nstage: pretrain\nseed: 2\n")
    with pytest.raises(MmrepError, match="duplicate key 'seed'"):
        read_yaml(top)
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\nseed: 1\n")
    (tmp_path / "b.yaml").write_text("_base_: ./a.yaml\nseed: 2\n")
    with pytest.raises(MmrepError, match=r"_base_ includes form a cycle \(.*a.yaml -> .*b.yaml -> .*a.yaml\)"):
        read_yaml(tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("_base_: self.yaml\n")
    with pytest.raises(MmrepError, match="cycle"):
        read_yaml(tmp_path / "self.yaml")
    (tmp_path / "ok.yaml").write_text("_base_: c.yaml\nseed: 1\n")
    (tmp_path / "c.yaml").write_text("seed: 2\nstage: posttrain\n")
    assert read_yaml(tmp_path / "ok.yaml") == {"seed": 1, "stage": "posttrain"}
    for bad in (dup, tmp_path / "a.yaml"):  # through the CLI: one line on stderr, exit 2
        assert mmrep_main(["train", "--config", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("mmrep: error: config file")
