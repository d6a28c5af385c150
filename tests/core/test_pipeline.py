"""The main job end to end on a very small world (README command 1, scaled down)."""

import json

import pytest

from mmrep.pipeline import RunConfig, main
from mmrep import config as cfgmod

SHORT = ["--optim.total_steps=4", "--optim.warmup_steps=1", "--data.batch_size=8", "--checkpoint.every_steps=0",
         "--deepspeed.config=configs/deepspeed/zero0.json", "--logging.every_steps=2", "--data.num_workers=0"]


@pytest.mark.slow
def test_main_job_runs_end_to_end_and_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "run"
    argv = ["--config", "configs/run/world-tiny.yaml", f"--output_dir={out}",
            "--world.overrides=[--world.n_items=160, --world.n_users=40, --world.n_queries=200]",
            f"--pretrain.overrides={json.dumps(SHORT)}", f"--posttrain.overrides={json.dumps(SHORT)}",
            f"--align.overrides={json.dumps(SHORT)}", "--application.ctr_seeds=1", "--application.centroids=4",
            "--application.vq_k=5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "MBE2.0-protocol evaluation" in printed and "Downstream CTR model" in printed
    report = (out / "report" / "report.md").read_text()
    assert "Exchange rate" in report and (out / "report" / "recall_by_modality.png").is_file()
    assert (out / "report" / "training_curves.png").is_file()
    assert "| step | seconds | load avg at end |" in report and "| pretrain |" in report  # per-step times
    assert "| step | seconds |" in printed
    versions = json.loads((out / "exchange-rate" / "report.json").read_text())["versions"]
    assert sorted(versions) == ["align", "posttrain", "pretrain", "untrained"]
    for v in versions:
        metrics = json.loads((out / "versions" / v / "metrics.json").read_text())
        assert "image-search R@10" in metrics and "t→mm R@10" in metrics
    # a rerun resumes: every step is skipped
    assert main(argv) == 0
    assert "[ctr] done earlier, skipping" in capsys.readouterr().out


def test_step_times_are_recorded_in_order_with_the_load(tmp_path):
    import os
    import time

    from mmrep.pipeline import Job
    from mmrep.report import step_time_table

    job = Job(RunConfig(output_dir=str(tmp_path / "run")))
    job.call("first", time.sleep, 0.05)
    job.call("second", lambda: None)
    job.call("first", time.sleep, 5)  # finished earlier: skipped, its time kept
    rows = job.step_times()
    assert [r[0] for r in rows] == ["first", "second"] and rows[0][1] >= 0.0 and rows[0][2] is not None
    assert rows[0][2] == pytest.approx(os.getloadavg()[0], abs=50)
    table = step_time_table(rows)
    assert table.splitlines()[0] == "| step | seconds | load avg at end |" and "| total |" in table
    # a resumed job reads the times of steps finished by the earlier run
    assert [r[0] for r in Job(RunConfig(output_dir=str(tmp_path / "run"))).step_times()] == ["first", "second"]


def test_run_config_rejects_unknown_keys(tmp_path):
    from mmrep.errors import MmrepError

    with pytest.raises(MmrepError, match="unknown config key 'world.sizee'"):
        cfgmod.load(RunConfig, "configs/run/world-tiny.yaml", ["--world.sizee=tiny"])


FASHION = __import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "data" / "fashion_product_images_small"


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="../shared/data (Fashion Product Images) is not present")
def test_main_job_on_the_fashion_catalogue(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "fashion"
    short = ["--model=../model/tiny.yaml", "--max_train_seconds=5", "--data.batch_size=8",
             "--checkpoint.every_steps=0", "--loss.matryoshka_dims=[]", "--data.num_workers=0",
             "--feature_cache.enabled=false"]  # the recipe caches its frozen towers' outputs; tiny.yaml's train
    assert main(["--config", "configs/run/fashion-small.yaml", f"--output_dir={out}", f"--catalogue.source={FASHION}",
                 "--catalogue.max_eval_items=60", "--untrained_model=configs/model/tiny.yaml",
                 f"--pretrain.overrides={json.dumps(short)}"]) == 0
    manifest = json.loads((out / "catalogue" / "train" / "manifest.json").read_text())
    assert manifest["count"] == 35349
    report = json.loads((out / "eval" / "mbe" / "report.json").read_text())
    assert [e["name"].split("/")[0] for e in report["encoders"]] == ["untrained", "pretrain"]
    assert report["benchmark"]["counts"]["items"] == 60
    assert (out / "embeddings" / "pretrain" / "index.json").is_file()
    assert "t→i R@10" in capsys.readouterr().out
