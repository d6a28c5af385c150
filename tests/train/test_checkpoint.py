"""Checkpoints: tags, `latest`, stale temp dirs, and a SIGKILLed run that resumes from its last complete save."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from mmrep.errors import MmrepError
from mmrep.train import checkpoint as ckpt


def _fake_tag(root: Path, step: int) -> None:
    (root / ckpt.tag_for(step)).mkdir(parents=True)


def test_tags_latest_and_errors(tmp_path):
    root = tmp_path / "checkpoints"
    assert ckpt.list_tags(root) == []
    with pytest.raises(MmrepError, match="no checkpoint"):
        ckpt.resolve_tag(root, "latest")
    for step in (10, 2, 100):
        _fake_tag(root, step)
    (root / ".tmp-global_step200").mkdir()  # an interrupted save: never listed
    assert ckpt.list_tags(root) == ["global_step2", "global_step10", "global_step100"]  # numeric order
    assert ckpt.resolve_tag(root, "latest") == "global_step100"  # no `latest` file: newest complete tag
    (root / "latest").write_text("global_step10")
    assert ckpt.resolve_tag(root, "latest") == "global_step10"
    (root / "latest").write_text("global_step999")  # points at a pruned tag: fall back to the newest
    assert ckpt.resolve_tag(root, "latest") == "global_step100"
    assert ckpt.resolve_tag(root, "global_step2") == "global_step2"
    with pytest.raises(MmrepError, match="available: global_step2, global_step10, global_step100"):
        ckpt.resolve_tag(root, "global_step3")
    assert ckpt.clean_stale(root) == [".tmp-global_step200"]
    assert not (root / ".tmp-global_step200").exists()


def test_config_validation():
    with pytest.raises(MmrepError, match="keep_last"):
        ckpt.CheckpointConfig(keep_last=0)
    with pytest.raises(MmrepError, match="every_steps"):
        ckpt.CheckpointConfig(every_steps=-1)


def _complete(tag_dir: Path) -> bool:
    names = {p.name for p in tag_dir.iterdir()}
    return {"mp_rank_00_model_states.pt", "trainer_state.json", "rank0_state.pt"} <= names and any(
        n.endswith("optim_states.pt") for n in names)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_latest(th, tiny_world, tmp_path):
    """SIGKILL a run that checkpoints every step; only complete checkpoints are visible, and
    `--resume latest` continues from the newest one and cleans what the kill left behind."""
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    args = [str(th.python), str(th.repo / "pretrain/train.py"), "--config", str(th.repo / "configs/train/pretrain-tiny.yaml"),
            *th.overrides(tiny_world, out, **{"checkpoint.every_steps": 1, "checkpoint.keep_last": 2,
                                               "optim.total_steps": 10_000})]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(args, cwd=th.repo, env=th.env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            tag = ckpt.read_latest(ckpts)
            if tag and int(tag.removeprefix("global_step")) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.3)  # somewhere in a later step or save
    finally:
        proc.kill()  # SIGKILL: no handler runs
        proc.wait()
        log.close()
    tags = ckpt.list_tags(ckpts)
    assert tags and len(tags) <= 3  # keep_last=2 (+1 if killed between rename and prune)
    assert all(_complete(ckpts / t) for t in tags), "a visible checkpoint is incomplete"
    last = ckpt.resolve_tag(ckpts, "latest")
    k = int(last.removeprefix("global_step"))
    assert k >= 3

    resumed = subprocess.run(args[:-1] + [f"--optim.total_steps={k + 2}", "--resume", "latest"], cwd=th.repo,
                             env=th.env(), capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert re.search(rf"resumed from \S+{last} at step {k}", resumed.stdout), resumed.stdout[-2000:]
    assert (ckpts / "latest").read_text() == f"global_step{k + 2}"
    assert not [p for p in ckpts.iterdir() if p.name.startswith(ckpt.TMP_PREFIX)]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][-2:] == [k + 1, k + 2]
    assert rows[-1]["samples_seen"] == (k + 2) * 8
    assert (out / "encoder" / "model.safetensors").is_file()


def test_pruned_checkpoint_is_never_visible_half_deleted(tmp_path, monkeypatch):
    """A kill in the middle of pruning leaves only a temp dir: no partial tag is listed, and
    clean_stale removes what is left."""
    for step in (1, 2):
        (tmp_path / ckpt.tag_for(step)).mkdir()
        (tmp_path / ckpt.tag_for(step) / "f.pt").write_bytes(b"x")

    def killed_rmtree(path, ignore_errors=False):  # the process dies inside the delete
        if ".tmp-old-" in str(path) and (tmp_path / ".tmp-old-global_step1").exists():
            raise KeyboardInterrupt
    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        ckpt._discard(tmp_path / "global_step1")
    monkeypatch.undo()
    assert ckpt.list_tags(tmp_path) == ["global_step2"]
    assert ckpt.clean_stale(tmp_path) == [".tmp-old-global_step1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step2"]


def _last_step(metrics: Path) -> int:
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except json.JSONDecodeError:  # a line being written
        return 0


@pytest.mark.slow
def test_repeated_kills_leave_one_metrics_line_per_step(th, tiny_world, tmp_path):
    """SIGKILL a run three times, each time after it logged steps past its last checkpoint, resuming in between;
    the final log holds exactly one line per step (the steps after each checkpoint were cut and logged again)."""
    out = tmp_path / "run"
    metrics, ckpts = out / "metrics.jsonl", out / "checkpoints"
    base = [str(th.python), str(th.repo / "pretrain/train.py"), "--config",
            str(th.repo / "configs/train/pretrain-tiny.yaml"),
            *th.overrides(tiny_world, out, **{"checkpoint.every_steps": 3, "checkpoint.keep_last": 2,
                                               "optim.total_steps": 10_000})]
    kills = 0
    for attempt in range(3):
        args = base + (["--resume", "latest"] if attempt else [])
        proc = subprocess.Popen(args, cwd=th.repo, env=th.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 240
            start = ckpt.read_latest(ckpts)
            while time.time() < deadline and proc.poll() is None:
                tag = ckpt.read_latest(ckpts)
                k = int(tag.removeprefix("global_step")) if tag else 0
                if tag != start and _last_step(metrics) > k:  # logged past a checkpoint of this attempt
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "the run ended or stalled before it could be killed"
        finally:
            proc.kill()
            proc.wait()
        kills += 1
    last = int(ckpt.resolve_tag(ckpts, "latest").removeprefix("global_step"))
    assert _last_step(metrics) > last  # the log ran ahead of the checkpoint: steps a resume must not duplicate
    final = subprocess.run(base + [f"--optim.total_steps={last + 2}", "--resume", "latest"], cwd=th.repo,
                           env=th.env(), capture_output=True, text=True, timeout=240)
    assert final.returncode == 0, final.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert kills == 3 and steps == list(range(1, last + 3))
