"""Two CPU ranks under the DeepSpeed launcher (ZeRO-2, gloo): the 2-rank loss equals the one-process
loss on the same global batch, and a checkpoint saved at 2 ranks resumes at 2 ranks.

This file is also the worker the launcher starts (`python test_distributed.py --worker ...`): each rank
takes its half of fixed global batches and trains them through the real Trainer.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

GLOBAL_BATCH = 8
STAGE = "posttrain"  # the richest objective: gathered in-batch negatives, queue, hard negatives, ω, filtering


def global_batches(trainer, world: Path, n: int) -> list:
    """n fixed global batches of GLOBAL_BATCH triplets (deterministic transforms)."""
    from mmrep.data.readers import iter_triplets

    triplets = list(iter_triplets(world / "triplets" / "train"))[: n * GLOBAL_BATCH]
    collator = trainer.collator(train=False)
    return [collator.triplets(triplets[i * GLOBAL_BATCH:(i + 1) * GLOBAL_BATCH]) for i in range(n)]


def rank_slice(batch, rank: int, world_size: int):
    """This rank's contiguous share of a global TripletBatch (rows keep their padding)."""
    from mmrep.data.collate import TripletBatch

    b = len(batch) // world_size
    rows = slice(rank * b, (rank + 1) * b)
    k = batch.negative_mask.shape[1]
    neg_rows = slice(rank * b * k, (rank + 1) * b * k)
    return TripletBatch(batch.ids[rows], batch.query.select(rows), batch.positive.select(rows),
                        batch.negatives.select(neg_rows), batch.negative_mask[rows], batch.category[rows],
                        batch.positive_ids[rows], batch.negative_ids[rows])


TOTAL_STEPS = 5


def overrides(world: Path, out: Path, world_size: int, zero: int = 2) -> list[str]:
    """ZeRO-2 trains the MoE encoder; ZeRO-3 (parameter partitioning) is for dense models, so it trains
    the "no MoE" ablation (model.moe.mode=dense)."""
    from conftest import train_overrides

    # a dense model has no W* to give its own LR (posttrain-tiny's optim.lr_scales)
    extra = {"model.moe.mode": "dense", "optim.lr_scales": "{}"} if zero == 3 else {}
    return train_overrides(world, out, STAGE, init_from="", **{
        "data.batch_size": GLOBAL_BATCH // world_size, "optim.total_steps": TOTAL_STEPS, "optim.warmup_steps": 1,
        "deepspeed.config": f"configs/deepspeed/zero{zero}.json", "checkpoint.keep_last": 3,
        # the MoE load-balancing loss is per encoder call, i.e. per rank's micro-batch (as in any
        # expert-parallel MoE): the one term that legitimately differs; every other term is global
        "loss.aux_coef": 0.0, **extra})


def worker(argv: list[str]) -> None:
    """One rank: train up to step --steps (of TOTAL_STEPS) on its half of the fixed global batches; running
    out of batches ends the run with a checkpoint, as a time budget would."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import REPO
    from mmrep.train.trainer import Trainer, load_config

    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--zero", type=int, default=2)
    ap.add_argument("--ep", action="store_true")
    ap.add_argument("--local_rank", type=int, default=0)
    args, _ = ap.parse_known_args(argv)
    extra = ["--checkpoint.resume=latest"] if args.resume else []
    if args.ep:  # pretraining: every rank makes the same encoder calls, as DeepSpeed's all-to-all needs
        from conftest import train_overrides

        cfg = load_config(str(REPO / "configs/train/pretrain-tiny.yaml"), train_overrides(
            args.world, args.out, "pretrain", **{"optim.total_steps": args.steps, "model.moe.backend": "deepspeed",
                                                 "model.moe.ep_size": 2, "loss.aux_coef": 0.0,
                                                 "deepspeed.config": "configs/deepspeed/zero2.json"}))
        trainer = Trainer(cfg)
        trainer.fit()
    else:
        cfg = load_config(str(REPO / "configs/train" / f"{STAGE}-tiny.yaml"),
                          overrides(args.world, args.out, 2, args.zero) + extra)
        trainer = Trainer(cfg, build_loader=False)
        batches = [rank_slice(b, trainer.rank, trainer.world) for b in global_batches(trainer, args.world, args.steps)]
        trainer.fit(batches[trainer.step:])
    if args.ep:  # the distributed model's embeddings of fixed products (every rank takes part: all-to-all)
        import dataclasses

        from mmrep.data.readers import iter_products

        products = list(iter_products(args.world / "items" / "train"))[:GLOBAL_BATCH]
        inputs = trainer.collator(train=False).products(products).inputs
        encoder = trainer.engine.module.encoder.eval()
        with torch.no_grad():
            emb = encoder(inputs.to(trainer.device)).embedding
        if trainer.rank == 0:
            torch.save({"emb": emb, **{f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs)}},
                       args.out / "distributed_embeddings.pt")


def launch(th, world: Path, out: Path, steps: int, resume: bool = False, zero: int = 2, ep: bool = False) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(th.repo / ".venv/bin/deepspeed"), "--num_gpus", "2", "--master_port", str(port), __file__,
           "--worker", "--world", str(world), "--out", str(out), "--steps", str(steps), "--zero", str(zero)] + (
               ["--resume"] if resume else []) + (["--ep"] if ep else [])
    proc = subprocess.run(cmd, cwd=th.repo, env=th.env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_zero2_match_one_process_and_resume(th, tiny_world, tmp_path):
    from mmrep.train.trainer import Trainer, load_config

    out = tmp_path / "two"
    launch(th, tiny_world, out, steps=3)
    state = json.loads((out / "checkpoints" / "global_step3" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 3
    assert {p.name for p in (out / "checkpoints" / "global_step3").glob("rank*_state.pt")} == \
        {"rank0_state.pt", "rank1_state.pt"}
    stdout = launch(th, tiny_world, out, steps=5, resume=True)  # 2 ranks resume the 2-rank checkpoint
    assert "resumed from" in stdout and "at step 3" in stdout
    two = losses(out)
    assert sorted(two) == [1, 2, 3, 4, 5]

    # the same five global batches in this process (one rank, ZeRO-2)
    single = tmp_path / "one"
    cfg = load_config(str(th.repo / "configs/train" / f"{STAGE}-tiny.yaml"), overrides(tiny_world, single, 1))
    trainer = Trainer(cfg, build_loader=False)
    trainer.fit(global_batches(trainer, tiny_world, 5))
    one = losses(single)
    for step in range(1, 6):
        assert two[step] == pytest.approx(one[step], abs=1e-5), (step, two, one)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_zero3_dense_match_one_process_and_export(th, tiny_world, tmp_path):
    """ZeRO-3 partitions the dense encoder's parameters over the 2 ranks: the losses still equal one plain
    process (ZeRO-0) on the same global batches, and the export gathers the full weights."""
    from mmrep.model import load_encoder
    from mmrep.train.trainer import Trainer, load_config

    out = tmp_path / "two"
    launch(th, tiny_world, out, steps=3, zero=3)
    two = losses(out)
    single = tmp_path / "one"
    cfg = load_config(str(th.repo / "configs/train" / f"{STAGE}-tiny.yaml"),
                      overrides(tiny_world, single, 1, zero=3) + ["--deepspeed.config=configs/deepspeed/zero0.json"])
    trainer = Trainer(cfg, build_loader=False)
    trainer.fit(global_batches(trainer, tiny_world, 3))
    one = losses(single)
    assert sorted(two) == [1, 2, 3]
    for step in range(1, 4):
        assert two[step] == pytest.approx(one[step], abs=1e-5), (step, two, one)
    a, b = load_encoder(out / "encoder").state_dict(), load_encoder(single / "encoder").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape and torch.allclose(a[k], b[k], atol=1e-5), k


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_expert_parallel_export_holds_every_expert(th, tiny_world, tmp_path):
    """Pretraining with DeepSpeed's MoE at ep_size 2: each rank trains 2 of the 4 experts; the export gathers
    all 4 into a one-process model that loads here and gives the distributed model's embeddings."""
    from mmrep.batch import EncoderInput
    from mmrep.model import load_encoder

    out = tmp_path / "ep"
    launch(th, tiny_world, out, steps=2, ep=True)
    encoder = load_encoder(out / "encoder")
    assert encoder.cfg.moe.backend == "deepspeed" and encoder.cfg.moe.ep_size == 1
    experts = {k.split("deepspeed_experts.")[1].split(".")[0] for k in encoder.state_dict() if "deepspeed_experts." in k}
    assert experts == {"0", "1", "2", "3"}
    saved = torch.load(out / "distributed_embeddings.pt", weights_only=True)
    with torch.no_grad():
        mine = encoder(EncoderInput(**{k: v for k, v in saved.items() if k != "emb"})).embedding
    torch.testing.assert_close(mine, saved["emb"], atol=1e-5, rtol=1e-4)
    # each expert is the one DeepSpeed checkpointed under its global id (rank 1's experts are 2 and 3)
    state = encoder.state_dict()
    for layer in range(encoder.cfg.fusion.layers):
        for e in range(4):
            ckpt = torch.load(out / "checkpoints" / "global_step2" / f"layer_{layer}_expert_{e}_mp_rank_00_model_states.pt",
                              weights_only=True)
            for key, value in ckpt.items():
                assert torch.equal(state[key.removeprefix("encoder.")], value.float()), key


if __name__ == "__main__" and "--worker" in sys.argv:
    worker(sys.argv[1:])
