"""Resuming never unpickles arbitrary objects: a `__reduce__` payload in any checkpoint file a resume reads
is refused with one line (its code does not run), and a resume from our own safe files succeeds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mmrep.errors import MmrepError
from mmrep.train import checkpoint as ckpt


class _Payload:
    """Pickles as a call to exec that writes `marker`: what an attacker would plant in a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def plant(file: Path, marker: Path) -> None:
    """Replace a checkpoint file by one holding the payload next to plausible content."""
    torch.save({"module": {"w": torch.zeros(1)}, "payload": _Payload(marker)}, file)


def test_safe_load_refuses_a_payload_and_reads_tensors(tmp_path):
    marker = tmp_path / "marker"
    plant(tmp_path / "evil.pt", marker)
    with pytest.raises(MmrepError, match=r"outside the safe allow-list \(exec\).*--trust-checkpoint") as e:
        ckpt.safe_load(tmp_path / "evil.pt")
    assert "\n" not in str(e.value)
    assert not marker.exists()
    torch.save({"a": torch.arange(3), "b": [1, "x", 2.5]}, tmp_path / "ok.pt")
    got = ckpt.safe_load(tmp_path / "ok.pt")
    assert got["a"].tolist() == [0, 1, 2] and got["b"] == [1, "x", 2.5]


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np

    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    torch.save({"rng": ckpt.rng_state()}, tmp_path / "r.pt")
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    ckpt.set_rng_state(ckpt.safe_load(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


@pytest.mark.slow
def test_a_payload_in_any_checkpoint_file_never_runs_on_resume(th, tiny_world, tmp_path):
    from mmrep.train.trainer import Trainer

    out = tmp_path / "run"
    Trainer(th.config(tiny_world, out, **{"optim.total_steps": 2})).fit()
    tag_dir = out / "checkpoints" / "global_step2"
    files = sorted(p.name for p in tag_dir.glob("*.pt"))
    # ZeRO-1 (the tiny config): DeepSpeed's model states + optimizer states, and our per-rank state
    assert files == ["mp_rank_00_model_states.pt", "rank0_state.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"]
    resume = {"optim.total_steps": 3, "checkpoint.resume": "latest"}
    for name in files:
        run = tmp_path / f"evil-{name}"
        shutil.copytree(out, run)
        marker = tmp_path / f"marker-{name}"
        plant(run / "checkpoints" / "global_step2" / name, marker)
        with pytest.raises(MmrepError, match=rf"{name} holds objects outside the safe allow-list") as e:
            Trainer(th.config(tiny_world, run, **resume))
        assert "\n" not in str(e.value)
        assert not marker.exists(), f"the payload in {name} ran"
    # a rank state in the format mmrep wrote before (numpy arrays inside a pickle) needs --trust-checkpoint
    import random

    import numpy as np

    old = tmp_path / "old-format"
    shutil.copytree(out, old)
    torch.save({"rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
                "state": {"data_epoch": 0, "batches_in_epoch": 2}}, old / "checkpoints" / "global_step2" / "rank0_state.pt")
    with pytest.raises(MmrepError, match=r"rank0_state.pt holds objects outside the safe allow-list \(numpy"):
        Trainer(th.config(tiny_world, old, **resume))
    assert Trainer(th.config(tiny_world, old, **resume, **{"checkpoint.trust": True})).step == 2
    # the untouched run resumes from its own (safe) files without --trust-checkpoint
    trainer = Trainer(th.config(tiny_world, out, **resume))
    assert trainer.step == 2 and trainer.resumed_from == "global_step2"
    assert trainer.fit()["step"] == 3
