"""A run folder is never lost to a bad command: validation comes before any write, `--overwrite` replaces only
mmrep runs (marker file) and keeps the old run until the new one has a checkpoint, and resuming keeps the
run's record (config.yaml, metrics.jsonl with one line per step, a finished run stays as it is)."""

from __future__ import annotations

import json

import pytest

from mmrep.errors import MmrepError
from mmrep.fsutil import MARKER


def _snapshot(run):
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_overwrite_validates_first_and_keeps_the_old_run_until_the_new_one_checkpoints(th, tiny_world, tmp_path):
    from mmrep.train.trainer import PREVIOUS, Trainer

    run = tmp_path / "run"
    Trainer(th.config(tiny_world, run, **{"optim.total_steps": 2})).fit()
    assert (run / MARKER).is_file() and (run / "checkpoints" / "latest").read_text() == "global_step2"
    before = _snapshot(run)

    # a bad input with --overwrite: refused before anything is touched
    with pytest.raises(MmrepError, match="/no/such"):
        Trainer(th.config(tiny_world, run, overwrite=True, **{"data.shards": "/no/such"}))
    assert _snapshot(run) == before

    # the new run dies before its first checkpoint: the old run is put back, whole and resumable
    def dying():
        raise RuntimeError("killed in the first step")
        yield
    with pytest.raises(RuntimeError, match="first step"):
        Trainer(th.config(tiny_world, run, overwrite=True, **{"optim.total_steps": 3})).fit(dying())
    assert {k for k in _snapshot(run)} == set(before) and not (run / PREVIOUS).exists()
    assert Trainer(th.config(tiny_world, run, **{"checkpoint.resume": "latest", "optim.total_steps": 3})).step == 2

    # a start-over that completes replaces the old run (set aside until its first checkpoint, then deleted)
    Trainer(th.config(tiny_world, run, overwrite=True, **{"optim.total_steps": 1})).fit()
    assert (run / "checkpoints" / "latest").read_text() == "global_step1"
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("global")] == ["global_step1"]
    assert not (run / PREVIOUS).exists()
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_overwrite_never_replaces_a_folder_mmrep_did_not_write(th, tiny_world, tmp_path):
    from mmrep.train.trainer import Trainer

    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    with pytest.raises(MmrepError, match=f"did not write \\(no {MARKER} file\\)"):
        Trainer(th.config(tiny_world, mine, overwrite=True))
    assert (mine / "chapter1.tex").read_text() == "years of work"
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(MmrepError, match="output_dir .*afile is a file"):
        Trainer(th.config(tiny_world, afile))


@pytest.mark.slow
def test_resume_keeps_the_config_and_a_finished_run_stays_untouched(th, tiny_world, tmp_path):
    from mmrep.train.trainer import RESUMES, Trainer

    run = tmp_path / "run"
    Trainer(th.config(tiny_world, run, **{"optim.total_steps": 2, "checkpoint.every_steps": 1})).fit()
    config = (run / "config.yaml").read_text()
    Trainer(th.config(tiny_world, run, **{"optim.total_steps": 3, "checkpoint.resume": "latest",
                                          "optim.lr": 0.5})).fit()
    assert (run / "config.yaml").read_text() == config  # the run's original resolved config
    resumes = [json.loads(x) for x in (run / RESUMES).read_text().splitlines()]
    assert [(r["from"], r["step"]) for r in resumes] == [("global_step2", 2)] and resumes[0]["argv"]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]

    before = _snapshot(run)
    result = Trainer(th.config(tiny_world, run, **{"optim.total_steps": 3, "checkpoint.resume": "latest"})).fit()
    assert result["stopped_by"] == "finished"
    after = _snapshot(run)
    assert {k: v for k, v in after.items() if k != RESUMES} == {k: v for k, v in before.items() if k != RESUMES}


@pytest.mark.slow
def test_resume_with_another_model_shape_is_one_line(th, tiny_world, tmp_path):
    from mmrep.train.trainer import Trainer

    run = tmp_path / "run"
    Trainer(th.config(tiny_world, run, **{"optim.total_steps": 1})).fit()
    before = _snapshot(run)
    with pytest.raises(MmrepError, match="holds another model than this config builds") as e:
        Trainer(th.config(tiny_world, run, **{"checkpoint.resume": "latest", "model.fusion.width": 32,
                                              "model.fusion.heads": 2}))
    assert "\n" not in str(e.value)
    assert _snapshot(run) == before


@pytest.mark.slow
def test_resampled_epoch_counter_survives_a_resume(th, tiny_world, tmp_path):
    """64 samples per epoch / batch 8 = 8 batches: a run resumed at step 5 logs the same epochs as one that
    was never interrupted."""
    from mmrep.train.trainer import Trainer

    extra = {"optim.total_steps": 12, "data.resampled": True, "data.epoch_length": 64}
    ref = tmp_path / "ref"
    Trainer(th.config(tiny_world, ref, **extra)).fit()
    run = tmp_path / "run"
    Trainer(th.config(tiny_world, run, **{**extra, "optim.total_steps": 5})).fit()
    Trainer(th.config(tiny_world, run, **{**extra, "checkpoint.resume": "latest"})).fit()

    def epochs(folder):
        return [(r["step"], r["epoch"]) for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())]
    assert epochs(run) == epochs(ref)
    assert epochs(ref)[-1] == (12, 1)
