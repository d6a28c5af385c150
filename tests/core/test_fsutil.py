"""Output folders: only what mmrep wrote (marker, or an older output's own files) is ever replaced."""

from __future__ import annotations

import pytest

from mmrep.cli import main as mmrep_main
from mmrep.errors import MmrepError
from mmrep.fsutil import MARKER, atomic_dir, check_replaceable, restore_aside, set_aside


def test_check_replaceable_and_atomic_dir(tmp_path):
    assert check_replaceable(tmp_path / "new", False) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "paper.tex").write_text("mine")
    with pytest.raises(MmrepError, match=f"did not write \\(no {MARKER} file\\)"):
        check_replaceable(mine, True)
    with pytest.raises(MmrepError, match="did not write"):
        with atomic_dir(mine, "report") as tmp:
            (tmp / "report.json").write_text("{}")
    assert (mine / "paper.tex").read_text() == "mine" and not (mine / "report.json").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(MmrepError, match="is a file"):
        check_replaceable(tmp_path / "afile", True)

    out = tmp_path / "out"
    with atomic_dir(out, "report") as tmp:
        (tmp / "report.json").write_text("{}")
    assert (out / MARKER).is_file()
    with pytest.raises(MmrepError, match="pass --overwrite"):
        check_replaceable(out, False)
    with atomic_dir(out, "report") as tmp:  # ours: replaced
        (tmp / "report.json").write_text('{"v": 2}')
    assert (out / "report.json").read_text() == '{"v": 2}'
    legacy = tmp_path / "legacy"  # written before the marker existed: recognised by its own files
    legacy.mkdir()
    (legacy / "report.json").write_text("{}")
    check_replaceable(legacy, True, ("report.json",))


def test_set_aside_and_restore(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("old")
    set_aside(run, ["checkpoints", "config.yaml"], ".prev")
    assert sorted(p.name for p in run.iterdir()) == [".prev"]
    (run / "config.yaml").write_text("new")  # the new attempt
    (run / "metrics.jsonl").write_text("")
    set_aside(run, ["config.yaml", "metrics.jsonl"], ".prev")  # a second start-over keeps the OLDER content
    assert (run / ".prev" / "config.yaml").read_text() == "old" and not (run / "config.yaml").exists()
    restore_aside(run, ".prev")
    assert (run / "config.yaml").read_text() == "old" and (run / "checkpoints").is_dir()
    assert not (run / ".prev").exists()


def test_quantize_and_synth_refuse_a_foreign_folder_before_any_work(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert mmrep_main(["quantize", "--emb", str(tmp_path / "nope"), "--out", str(mine), "--overwrite"]) == 2
    assert mmrep_main(["data", "synth", "--size", "tiny", "--out", str(mine), "--overwrite"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("did not write" in line for line in err)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
