"""The DeepSpeed trainer in one process: stages end to end, feature caching, resume, config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mmrep.errors import MmrepError
from mmrep.train.schedule import warmup_cosine



def test_warmup_cosine_shape():
    lr = [warmup_cosine(s, 4, 20, 0.1) for s in range(20)]
    assert lr[0] == pytest.approx(0.25) and lr[3] == pytest.approx(1.0)  # linear warmup
    assert all(a >= b for a, b in zip(lr[3:], lr[4:]))  # then non-increasing
    assert lr[-1] > 0.1 and warmup_cosine(20, 4, 20, 0.1) == pytest.approx(0.1)  # ends at min_ratio
    assert warmup_cosine(10, 0, 20) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    # with a progress fraction (time budget) the cosine ignores the step count after warmup
    assert warmup_cosine(2, 4, 20, progress=0.9) == pytest.approx(0.75)  # still warming up
    assert warmup_cosine(7, 4, 20, 0.1, progress=0.5) == pytest.approx(0.55)
    assert warmup_cosine(7, 4, 20, 0.1, progress=1.7) == pytest.approx(0.1)  # past the budget: clamped


def test_lr_scales_split_groups_by_longest_prefix_and_reject_typos():
    from torch import nn

    from mmrep.train.trainer import param_groups

    m = nn.Module()
    m.encoder = nn.Module()
    m.encoder.layers = nn.Linear(3, 3)
    m.encoder.layers_extra = nn.Linear(3, 3)  # a prefix of a name is not a match: "layers" != "layers_extra"
    m.encoder.proj = nn.Linear(3, 3)
    m.encoder.proj.weight.requires_grad_(False)  # frozen parameters join no group
    groups = param_groups(m, 0.05, 1e-3, {"encoder": 0.5, "encoder.layers": 0.1})
    by_name = {g["name"]: g for g in groups}
    assert sorted(by_name) == ["decay@lr×0.1", "decay@lr×0.5", "no_decay@lr×0.1", "no_decay@lr×0.5"]
    assert by_name["decay@lr×0.1"]["params"] == [m.encoder.layers.weight]
    assert by_name["decay@lr×0.1"]["lr"] == pytest.approx(1e-4) and by_name["decay@lr×0.5"]["lr"] == pytest.approx(5e-4)
    assert by_name["no_decay@lr×0.5"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == 5
    assert [g["name"] for g in param_groups(m, 0.05, 1e-3)] == ["decay", "no_decay"]  # no scales: as before
    with pytest.raises(MmrepError, match=r"optim.lr_scales: \['encoder.layer'\] match no trainable parameter"):
        param_groups(m, 0.05, 1e-3, {"encoder.layer": 0.1})


def test_time_schedule_spans_the_budget_and_travels_with_checkpoints(th, tiny_world, tmp_path):
    from mmrep.train.trainer import Trainer

    cfg = th.config(tiny_world, tmp_path / "t", max_train_seconds=100.0, **{
        "optim.schedule_over": "time", "optim.warmup_steps": 0, "optim.min_lr_ratio": 0.0, "optim.total_steps": 10**6})
    trainer = Trainer(cfg, build_loader=False)
    for seconds in (0.0, 25.0, 50.0, 100.0, 150.0):
        trainer.train_seconds = seconds
        trainer.scheduler.step()
        expected = cfg.optim.lr * 0.5 * (1 + math.cos(math.pi * min(seconds / 100.0, 1.0)))
        assert trainer.scheduler.get_last_lr()[0] == pytest.approx(expected, abs=1e-12), seconds
    assert trainer.trainer_state()["train_seconds"] == 150.0  # a resumed run continues the budget and the LR
    with pytest.raises(MmrepError, match="schedule_over 'time' needs a time budget"):
        th.config(tiny_world, tmp_path / "u", **{"optim.schedule_over": "time"})


def test_config_composes_sections_and_rejects_bad_keys(th, tiny_world, tmp_path):
    from mmrep.train.trainer import load_config

    cfg = th.config(tiny_world, tmp_path / "run", "posttrain", **{"optim.micro_batch": 4, "deepspeed.zero_stage": 2})
    assert cfg.stage == "posttrain" and cfg.data.batch_size == 4  # micro_batch drives the loader
    assert cfg.model.embed_dim == 64 and cfg.model.moe.mode == "modality"  # model YAML path resolved
    assert cfg.init_from == "runs/pretrain-tiny" and cfg.loss.queue
    with pytest.raises(MmrepError, match="optim.bogus"):
        load_config(str(th.repo / "configs/train/pretrain-tiny.yaml"), ["--optim.bogus=1"])
    with pytest.raises(MmrepError, match="zero_stage"):
        load_config(str(th.repo / "configs/train/pretrain-tiny.yaml"), ["--deepspeed.zero_stage=5"])
    with pytest.raises(MmrepError, match="pairs"):
        load_config(str(th.repo / "configs/train/align-tiny.yaml"), ["--pairs="])
    # --model.* overrides reach into the model YAML the config names, and are validated there
    dense = load_config(str(th.repo / "configs/train/pretrain-tiny.yaml"), ["--model.moe.mode=dense"])
    assert dense.model.moe.mode == "dense" and dense.model.embed_dim == 64
    with pytest.raises(MmrepError, match="moe.bogus"):
        load_config(str(th.repo / "configs/train/pretrain-tiny.yaml"), ["--model.moe.bogus=1"])


def test_cli_parses_top_level_keys_and_resume(th, tiny_world, tmp_path):
    from mmrep.train.cli import parse

    cfg = parse(["--config", str(th.repo / "configs/train/pretrain-tiny.yaml"), f"--output_dir={tmp_path}/x",
                 "--seed=3", "--resume", "latest", "--optim.lr=2e-3", "--local_rank=0"], stage="pretrain")
    assert cfg.output_dir == f"{tmp_path}/x" and cfg.seed == 3 and cfg.optim.lr == 2e-3
    assert cfg.checkpoint.resume == "latest" and cfg.stage == "pretrain"
    with pytest.raises(MmrepError, match="--config"):
        parse([], stage="pretrain")


def test_refuses_moe_with_zero3_and_existing_run(th, tiny_world, tmp_path):
    from mmrep.train.trainer import Trainer

    with pytest.raises(MmrepError, match="ZeRO-3 does not support Mixture-of-Experts"):
        Trainer(th.config(tiny_world, tmp_path / "z3", **{"deepspeed.config": "configs/deepspeed/zero3.json"}))
    with pytest.raises(MmrepError, match="deepspeed.config"):
        Trainer(th.config(tiny_world, tmp_path / "nojson", **{"deepspeed.config": "configs/deepspeed/nope.json"}))
    (tmp_path / "done" / "encoder").mkdir(parents=True)
    with pytest.raises(MmrepError, match="already holds a training run"):
        Trainer(th.config(tiny_world, tmp_path / "done"))


def _encoder_close(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-8) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k].float(), sb[k].float(), atol=atol) for k in sa)


@pytest.mark.slow
def test_pretrain_then_posttrain_tiny(th, tiny_world, tmp_path, monkeypatch):
    """Pretrain, then post-train from its encoder: checkpoints, metrics.jsonl, resolved config, export, W&B offline."""
    from mmrep.model import load_encoder
    from mmrep.train.trainer import Trainer, load_config

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    pre = tmp_path / "pre"
    trainer = Trainer(th.config(tiny_world, pre, **{"checkpoint.every_steps": 1, "checkpoint.keep_last": 2,
                                                     "logging.wandb": "offline"}))
    summary = trainer.fit()
    assert summary["step"] == 4 and summary["stopped_by"] == "total_steps"
    ckpts = pre / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith("global")) == ["global_step3", "global_step4"]
    assert (ckpts / "latest").read_text() == "global_step4"
    rows = [json.loads(line) for line in (pre / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "loss/intra", "temperature", "lr", "samples_per_s", "data_wait_s", "compute_s",
                "moe/load_0", "data/skipped"):
        assert key in rows[-1], key
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["samples_seen"] == 4 * 8
    resolved = load_config(str(pre / "config.yaml"))
    assert resolved.optim.total_steps == 4 and resolved.model.embed_dim == 64
    assert list((tmp_path / "wandb" / "wandb").glob("offline-run-*")), "W&B offline run dir missing"
    exported = load_encoder(pre / "encoder")
    assert _encoder_close(exported, trainer.engine.module.encoder)

    post = tmp_path / "post"
    cfg = th.config(tiny_world, post, "posttrain", init_from=pre, **{"optim.total_steps": 3})
    t2 = Trainer(cfg)
    assert _encoder_close(t2.engine.module.encoder, exported)  # started from the pretrain export
    summary = t2.fit()
    assert summary["step"] == 3
    rows = [json.loads(line) for line in (post / "metrics.jsonl").read_text().splitlines()]
    assert "loss/intra" in rows[-1] and any(k.startswith("loss/inter") for k in rows[-1])
    assert any(k.startswith("omega/") for k in rows[-1]) and any(k.startswith("filter/") for k in rows[-1])
    assert len(t2.objective.queue) > 0  # the memory queue was filled by after_step
    assert not _encoder_close(load_encoder(post / "encoder"), exported)  # post-training changed the weights


def _fixed_batches(trainer, world: Path, n: int, size: int) -> list:
    from mmrep.data.readers import iter_products

    products = list(iter_products(world / "items" / "train"))[: n * size]
    collator = trainer.collator(train=False)
    return [collator.products(products[i * size:(i + 1) * size]) for i in range(n)]


@pytest.mark.slow
def test_accum_keep_negatives_equals_full_batch(th, tiny_world, tmp_path):
    """Feature caching over 2 micro-batches of 4 = one batch of 8 (loss and the updated weights);
    DeepSpeed's plain accumulation over the same micro-batches gives a different loss."""
    from mmrep.train.trainer import Trainer

    # The MoE load-balancing loss is taken per encoder call (per micro-batch) by design, so it is the one
    # term that differs between the two; switch it off to compare the contrastive part exactly.
    common = {"optim.total_steps": 1, "optim.warmup_steps": 0, "optim.grad_clip": 0.5, "loss.aux_coef": 0.0}
    full = Trainer(th.config(tiny_world, tmp_path / "full", **common, **{"data.batch_size": 8}))
    batch = _fixed_batches(full, tiny_world, 1, 8)[0]
    halves = [_select(batch, slice(0, 4)), _select(batch, slice(4, 8))]
    m_full = full.train_step([batch])
    cached = Trainer(th.config(tiny_world, tmp_path / "cached", **common, **{
        "data.batch_size": 4, "optim.accum_steps": 2, "optim.accum_keep_negatives": True}))
    m_cached = cached.train_step(halves)
    assert m_cached["loss"] == pytest.approx(m_full["loss"], abs=1e-5)
    assert _encoder_close(cached.engine.module, full.engine.module, atol=1e-5)  # Adam's first step ~ lr*sign(g)
    plain = Trainer(th.config(tiny_world, tmp_path / "plain", **common, **{
        "data.batch_size": 4, "optim.accum_steps": 2}))
    m_plain = plain.train_step(halves)
    assert abs(m_plain["loss"] - m_full["loss"]) > 1e-3  # fewer negatives per micro-batch


def _select(batch, rows):
    from mmrep.data.collate import ProductBatch

    return ProductBatch(batch.ids[rows], batch.inputs.select(rows), batch.category[rows], batch.labels[rows],
                        None if batch.view is None else batch.view.select(rows))


@pytest.mark.slow
def test_resume_continues_the_same_trajectory(th, tiny_world, tmp_path):
    """Resuming from step 2 reproduces steps 3-4 of the uninterrupted run (weights, optimizer, LR, queue)."""
    from mmrep.train.trainer import Trainer

    out = tmp_path / "run"
    extra = {"checkpoint.every_steps": 2, "checkpoint.keep_last": 3, "optim.total_steps": 4}
    first = Trainer(th.config(tiny_world, out, "posttrain", init_from="", **extra))
    batches = _triplet_batches(first, tiny_world, 4)
    first.fit(batches)
    ref = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert (out / "checkpoints" / "global_step2" / "trainer_state.json").is_file()

    second = Trainer(th.config(tiny_world, out, "posttrain", init_from="",
                                 **extra, **{"checkpoint.resume": "global_step2"}))
    assert second.step == 2 and second.samples_seen == 2 * 8
    assert second.scheduler.last_epoch == 2
    second.fit(batches[2:])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the log is cut back to the checkpoint (steps 3-4 of the first run go) and appended to: one line per step
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[:2] == ref[:2]
    for a, b in zip(ref[2:], rows[2:], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
        assert b["lr"] == pytest.approx(a["lr"])
    with pytest.raises(MmrepError, match="no such checkpoint"):
        Trainer(th.config(tiny_world, out, "posttrain", init_from="", **{"checkpoint.resume": "global_step99"}))


def _triplet_batches(trainer, world: Path, n: int) -> list:
    from mmrep.data.readers import iter_triplets

    triplets = list(iter_triplets(world / "triplets" / "train"))[: n * 8]
    collator = trainer.collator(train=False)
    return [collator.triplets(triplets[i * 8:(i + 1) * 8]) for i in range(n)]


@pytest.mark.slow
def test_align_stage_and_time_budget(th, tiny_world, tmp_path):
    """Item alignment on the pair CSV; a time budget stops cleanly with a checkpoint and an export."""
    from mmrep.train.trainer import Trainer

    out = tmp_path / "align"
    cfg = th.config(tiny_world, out, "align", init_from="", pairs=tiny_world / "pairs.csv",
                      max_train_seconds=1e-3, **{"optim.total_steps": 50})
    summary = Trainer(cfg).fit()
    assert summary["stopped_by"] == "time budget" and summary["step"] == 1
    assert (out / "checkpoints" / "latest").read_text() == "global_step1"
    assert (out / "encoder" / "model.safetensors").is_file()
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 1 and "loss/align" in row


@pytest.mark.parametrize("stage", ["pretrain", "posttrain"])
def test_logged_loss_is_the_optimised_loss(th, tiny_world, tmp_path, stage):
    """The `loss` a step logs equals the loss the objective returns for that batch (it was once counted twice)."""
    import torch

    from mmrep.train.trainer import Trainer, to_device

    trainer = Trainer(th.config(tiny_world, tmp_path / stage, stage, init_from="", **{"optim.total_steps": 1}),
                      build_loader=False)
    batch = (_triplet_batches(trainer, tiny_world, 1) if stage == "posttrain"
             else _fixed_batches(trainer, tiny_world, 1, 8))[0]
    trainer.engine.train()
    with torch.no_grad():  # the same weights, batch and step the optimizer step below sees
        out, _ = trainer.engine(to_device(batch, trainer.device), mode="loss", step=0, total_steps=1)
    metrics = trainer.train_step([batch])
    assert metrics["loss"] == pytest.approx(float(out.loss), rel=1e-5)
