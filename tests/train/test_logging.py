"""MetricsLogger: a resumed run continues its W&B run (same id); a fresh run opens a new one."""

from __future__ import annotations

import json

from mmrep.train.logging import LoggingConfig, MetricsLogger


def test_resumed_run_keeps_its_wandb_run_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    cfg = LoggingConfig(wandb="offline", every_steps=1, progress=False)
    out = tmp_path / "run"

    first = MetricsLogger(cfg, out, {"lr": 1e-3}, total_steps=4)
    run_id = first.wandb_run.id
    first.log(1, {"loss": 2.0})
    first.close()
    assert (out / "wandb_run_id").read_text().strip() == run_id

    resumed = MetricsLogger(cfg, out, {"lr": 1e-3}, total_steps=4, start_step=1, append=True)
    assert resumed.wandb_run.id == run_id
    resumed.log(2, {"loss": 1.5})
    resumed.close()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    fresh = MetricsLogger(cfg, out, {"lr": 1e-3}, total_steps=4)  # e.g. --overwrite: a new run, a new id
    new_id = fresh.wandb_run.id
    fresh.close()
    assert new_id != run_id and (out / "wandb_run_id").read_text().strip() == new_id
