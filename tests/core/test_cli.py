"""The one front door: every command's --help works and documents --config and the override form;
command groups list their subcommands."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from mmrep import cli
from mmrep.cli_support import CommandParser
from mmrep.errors import MmrepError


@pytest.mark.parametrize("group", ["data", "eval", "configs"])
def test_group_help_lists_its_subcommands(group, capsys):
    assert cli.main([group, "--help"]) == 0
    out = capsys.readouterr().out
    subs = [name for name in cli.ROUTES if name.startswith(group + " ")]
    assert len(subs) >= 3 and all(name in out for name in subs)
    assert cli.main([group]) == 2 and subs[0] in capsys.readouterr().err  # the subcommand is missing


@pytest.mark.parametrize("route", list(cli.ROUTES))
def test_every_command_help_documents_config_and_overrides(route, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([*route.split(), "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert out.startswith(f"usage: mmrep {route}")
    assert "--config FILE" in out or "takes no --config file" in out
    assert "KEY=VALUE" in out or ".values=" in out


@dataclass
class Section:
    a: int = 1
    b: str = "x"
    c: list[int] = field(default_factory=list)


@dataclass
class Whole:
    sec: Section = field(default_factory=Section)
    out: str = ""


def test_invocation_layers_file_overrides_and_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sec: {a: 2, b: y}\nother: {ignored: 1}\n")
    p = CommandParser("mmrep t", sections={"sec": Section}, top_level=("out",))
    p.add_argument("--flag-b")
    call = p.invoke(["--config", str(cfg), "--sec.c=[1,2]", "--sec.a=3", "--flag-b", "z"])
    assert call.overrides == ["--sec.c=[1,2]", "--sec.a=3"]
    only = call.build(Section, {"sec.b": call.args.flag_b}, section="sec")  # file < overrides < flags
    assert (only.a, only.b, only.c) == (3, "z", [1, 2])
    with pytest.raises(MmrepError, match="unknown config key 'other'"):  # the whole file: every section must be known
        call.build(Whole)
    whole = p.invoke(["--sec.a=4", "--out=o"]).build(Whole)  # a top-level key takes --KEY=VALUE too
    assert whole.sec.a == 4 and whole.out == "o"
    with pytest.raises(MmrepError, match="settings live under --sec."):
        p.invoke(["--data.x=1"])
    with pytest.raises(MmrepError, match="takes no --config"):
        CommandParser("mmrep u", config_help=None, top_level=("k",)).invoke(["--config", "f.yaml"])


def test_train_takes_a_model_path_and_model_overrides(tmp_path):
    from mmrep.train.cli import build_parser

    call = build_parser().invoke(["--config", "c.yaml", "--model=../model/tiny.yaml", "--model.embed_dim=32",
                                  "--output_dir=o", "--overwrite", "--stage", "align"])
    assert call.overrides == ["--model=../model/tiny.yaml", "--model.embed_dim=32", "--output_dir=o", "--overwrite"]
    assert call.args.stage == "align" and call.config == "c.yaml"
