"""Any DeepSpeed checkpoint tag of an mmrep run -> the encoder, as `load_encoder` would give it.

The checkpoint folder layout is read here (`global_stepN/` tags, `latest`); `mmrep.train.checkpoint` writes it.

The architecture comes from the run's resolved `config.yaml` (its `model` section); the weights from the
tag: ZeRO 0-2 keep the whole module in `mp_rank_00_model_states.pt`; ZeRO-3 partitions it, so the fp32
master partitions are consolidated with DeepSpeed's own `zero_to_fp32` code; DeepSpeed-MoE experts live in
`layer_*_expert_*` files, merged in. Every file is read with
`torch.load(weights_only=True)` (tensors and plain containers only, no code runs), DeepSpeed's included.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from pathlib import Path
from typing import Iterator

import torch

from mmrep.config import from_dict, read_yaml
from mmrep.errors import MmrepError
from mmrep.model.config import ModelConfig

MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")  # ZeRO 0-2, ZeRO-3
EXPERT_STATES = "layer_*_expert_*_model_states.pt"  # moe.backend deepspeed keeps each expert in its own file
PREFIX = "encoder."  # the trainer's module wraps the encoder as `.encoder`
LATEST = "latest"
_TAG = re.compile(r"^global_step(\d+)$")


def tag_for(step: int) -> str:
    return f"global_step{step}"


def list_tags(ckpt_dir: str | Path) -> list[str]:
    """Complete checkpoint tags, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    tags = [(int(m.group(1)), p.name) for p in ckpt_dir.iterdir() if p.is_dir() and (m := _TAG.match(p.name))]
    return [name for _, name in sorted(tags)]


def read_latest(ckpt_dir: str | Path) -> str | None:
    path = Path(ckpt_dir) / LATEST
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    return tag if (Path(ckpt_dir) / tag).is_dir() else None


def resolve_tag(ckpt_dir: str | Path, resume: str) -> str:
    """`latest` or an explicit tag -> an existing complete tag, or MmrepError naming what exists."""
    ckpt_dir = Path(ckpt_dir)
    tags = list_tags(ckpt_dir)
    if resume == LATEST:
        tag = read_latest(ckpt_dir) or (tags[-1] if tags else None)
        if tag is None:
            raise MmrepError(f"--resume latest: no checkpoint in {ckpt_dir} (train without --resume first, "
                             f"or set checkpoint.dir to the run's checkpoint folder)")
        return tag
    if resume not in tags:
        raise MmrepError(f"--resume {resume}: no such checkpoint in {ckpt_dir} "
                         f"(available: {', '.join(tags) or 'none'}; or use --resume latest)")
    return resume


def find_run_config(ckpt_dir: Path) -> Path:
    """The run's config.yaml: beside the checkpoint folder (OUT/checkpoints -> OUT/config.yaml)."""
    for cand in (ckpt_dir.parent / "config.yaml", ckpt_dir / "config.yaml"):
        if cand.is_file():
            return cand
    raise MmrepError(f"no config.yaml next to {ckpt_dir}; pass --config RUN/config.yaml (the run's resolved config)")


def model_config(run_config: Path) -> ModelConfig:
    raw = read_yaml(run_config).get("model")
    if not isinstance(raw, dict):
        raise MmrepError(f"{run_config} has no model section; pass the run's resolved config.yaml (OUT/config.yaml)")
    return from_dict(ModelConfig, raw, "model")


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """DeepSpeed's consolidation calls torch.load(weights_only=False); make every such call the safe loader."""
    original = torch.load

    def safe_load(*args, **kwargs):
        return original(*args, **{**kwargs, "weights_only": True})

    torch.load = safe_load
    # DeepSpeed pickles its ZeRO stage (an IntEnum) and loss scaler (a plain attribute holder) beside the
    # tensors; allow-listing exactly these rebuilds them without running code from the file
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    try:
        with torch.serialization.safe_globals([ZeroStageEnum, LossScaler, DynamicLossScaler]):
            yield
    finally:
        torch.load = original


def checkpoint_state(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """The encoder's fp32 state dict stored under checkpoint `tag`."""
    tag = resolve_tag(ckpt_dir, tag)
    states = next((ckpt_dir / tag / name for name in MODEL_STATES if (ckpt_dir / tag / name).is_file()), None)
    if states is None:
        raise MmrepError(f"{ckpt_dir / tag} holds no {MODEL_STATES[0]}; is it a DeepSpeed checkpoint written by mmrep train?")
    try:
        saved = torch.load(states, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MmrepError(f"cannot read {states} as tensors ({str(e).splitlines()[0][:160]})") from None
    module = saved.get("module") or {}
    zero3 = (saved.get("ds_config") or {}).get("zero_optimization", {}).get("stage") == 3
    if zero3 or any(v.numel() == 0 for v in module.values() if isinstance(v, torch.Tensor)):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            with _weights_only_loads():
                module = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
        except Exception as e:
            raise MmrepError(f"cannot consolidate the ZeRO-3 checkpoint {ckpt_dir / tag} "
                             f"({str(e).splitlines()[0][:160]})") from None
    for file in sorted((ckpt_dir / tag).glob(EXPERT_STATES)):  # DeepSpeed-MoE experts (global ids in the keys)
        try:
            module.update(torch.load(file, map_location="cpu", weights_only=True))
        except Exception as e:
            raise MmrepError(f"cannot read {file} as tensors ({str(e).splitlines()[0][:160]})") from None
    state = {k[len(PREFIX):]: v.float() if v.is_floating_point() else v
             for k, v in module.items() if k.startswith(PREFIX) and isinstance(v, torch.Tensor)}
    if not state:
        raise MmrepError(f"{states} holds no encoder weights (keys starting with {PREFIX!r})")
    return state


def encoder_from_checkpoint(ckpt_dir: str | Path, tag: str = "latest", run_config: str | Path | None = None):
    """Rebuild the encoder of checkpoint `tag` (eval mode, exact weights)."""
    from mmrep.model.registry import build_encoder

    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir / "checkpoints").is_dir():  # a run dir was given
        ckpt_dir = ckpt_dir / "checkpoints"
    if not ckpt_dir.is_dir():
        raise MmrepError(f"--checkpoint {ckpt_dir} is not a folder; pass RUN/checkpoints (or the run dir)")
    cfg = model_config(Path(run_config) if run_config else find_run_config(ckpt_dir))
    if cfg.moe.backend == "deepspeed":  # one process holds every expert: the same model without expert parallelism
        cfg.moe = dataclasses.replace(cfg.moe, ep_size=1)
    state = checkpoint_state(ckpt_dir, tag)
    encoder = build_encoder(cfg, load_pretrained=False)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        what = missing[:1] or unexpected[:1]
        raise MmrepError(f"checkpoint {ckpt_dir}/{tag} does not match the run's model config "
                         f"({len(missing)} missing, {len(unexpected)} unexpected tensors, e.g. {what[0]})")
    return encoder.eval()
