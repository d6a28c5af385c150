"""The one DeepSpeed trainer used by every stage (pretrain, post-train, item alignment).

`TrainConfig` composes the sections (data, model, loss, optim, deepspeed, checkpoint, logging);
`Trainer(cfg)` builds the encoder, objective, loader and DeepSpeed engine; `Trainer.fit()` runs the
loop: per optimizer step, `accum_steps` micro-batches per rank, then log / checkpoint / time check.

With `optim.accum_keep_negatives` the step does open_clip-style feature caching: every micro-batch is
encoded once without grad, then each is re-encoded with grad and the loss is taken over the
concatenation of all micro-batches' features (this one's live, the others cached), so the whole
accumulated batch serves as contrastive negatives; each backward is unscaled because the summed
gradient over micro-batches is exactly the gradient of the full-batch loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import torch
from torch import nn

from mmrep import distributed
from mmrep.config import from_dict, read_yaml, save_resolved, to_dict
from mmrep.data.readers import DataConfig
from mmrep.evaluation.heldout import HeldoutConfig
from mmrep.errors import MmrepError
from mmrep.fsutil import MARKER, drop_aside, has_marker, restore_aside, set_aside, write_marker
from mmrep.model.config import ModelConfig
from mmrep.model.registry import get_backbone
from mmrep.train import checkpoint as ckpt
from mmrep.train.checkpoint import CheckpointConfig
from mmrep.train.feature_cache import FeatureCacheConfig, check_cacheable
from mmrep.train.flops import StepFlops
from mmrep.train.logging import LoggingConfig, MetricsLogger, StepTimer
from mmrep.train.objectives import LossConfig
from mmrep.train.schedule import build_scheduler

Stage = Literal["pretrain", "posttrain", "align"]
PREVIOUS = ".mmrep-previous"  # an --overwrite'd run, kept until the new run has its first checkpoint
RESUMES = "resumes.jsonl"  # one line per resume (time, checkpoint, step, command line) beside config.yaml


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.05  # not applied to biases, norms, temperatures (ndim < 2)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 0
    total_steps: int = 100  # optimizer steps; the cosine schedule spans them
    min_lr_ratio: float = 0.0  # final LR / peak LR
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    micro_batch: int = 0  # per-rank micro-batch; 0 = data.batch_size
    accum_steps: int = 1  # micro-batches per optimizer step (DeepSpeed gradient accumulation)
    accum_keep_negatives: bool = False  # feature caching: the accumulated batch is the negative set
    # "steps": the cosine spans total_steps; "time": it spans max_train_seconds (progress = training time /
    # budget), so a fixed-time recipe decays its LR to min_lr_ratio exactly when the budget ends
    schedule_over: Literal["steps", "time"] = "steps"
    # parameter-name prefix -> LR multiplier, e.g. {encoder.layers: 0.1}: train a module gently (the longest
    # matching prefix wins; names as in TrainModule: encoder.*, objective.*)
    lr_scales: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise MmrepError("optim.lr must be positive")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise MmrepError("optim.betas must be two numbers in [0, 1), e.g. [0.9, 0.98]")
        if self.total_steps < 1:
            raise MmrepError("optim.total_steps must be at least 1")
        if self.warmup_steps < 0:
            raise MmrepError("optim.warmup_steps must be >= 0")
        if self.accum_steps < 1 or self.micro_batch < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise MmrepError("optim.accum_steps must be >= 1 and optim.micro_batch, grad_clip, weight_decay >= 0")
        if any(v < 0 for v in self.lr_scales.values()):
            raise MmrepError(f"optim.lr_scales values must be >= 0, got {self.lr_scales}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise MmrepError("optim.min_lr_ratio must be in [0, 1]")


@dataclass
class DeepSpeedSection:
    config: str = "configs/deepspeed/zero1.json"  # absolute, or relative to the naming file, the cwd, the packaged configs
    zero_stage: int = -1  # -1 keeps the JSON's stage
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU

    def __post_init__(self) -> None:
        if self.zero_stage not in (-1, 0, 1, 2, 3):
            raise MmrepError("deepspeed.zero_stage must be 0, 1, 2, 3 (or -1 to keep the JSON's stage)")


@dataclass
class TrainConfig:
    stage: Stage = "pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig | str = field(default_factory=ModelConfig)  # a section, or a path to a model YAML
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)  # val benchmark evaluated when the run ends
    feature_cache: FeatureCacheConfig = field(default_factory=FeatureCacheConfig)  # frozen towers run once
    pairs: str = ""  # align stage: CSV of item pairs (item_a,item_b,kind) over the products in data.shards
    init_from: str = ""  # an encoder dir (or a run dir holding encoder/) to start from; the model section is then ignored
    output_dir: str = "runs/train"
    seed: int = 0
    max_train_seconds: float = 0.0  # stop cleanly (and checkpoint) after this much training time, resumed
    # runs counting the time before the checkpoint; 0 = no limit
    overwrite: bool = False  # allow starting fresh in an output_dir that already holds a run

    def __post_init__(self) -> None:
        if self.max_train_seconds < 0:
            raise MmrepError("max_train_seconds must be >= 0 (0 = no limit)")
        if self.optim.schedule_over == "time" and not self.max_train_seconds:
            raise MmrepError("optim.schedule_over 'time' needs a time budget: set max_train_seconds > 0")
        if not self.output_dir:
            raise MmrepError("output_dir must name a folder for the run")
        if self.stage == "align" and not self.pairs:
            raise MmrepError("the align stage needs pairs: set pairs to an item-pair CSV (item_a,item_b,kind), "
                             "e.g. worlds/tiny/pairs.csv")

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else Path(self.output_dir) / "checkpoints"


def load_config(path: str | None, overrides: list[str] = (), stage: str | None = None) -> TrainConfig:
    """A TrainConfig from YAML + overrides; a string `model` is read as a model YAML path, and `--model.a.b=v`
    overrides then apply to that file's contents (e.g. `--model.moe.mode=dense` on `model: ../model/tiny.yaml`)."""
    from mmrep.config import load, parse_override, set_dotted
    from mmrep.config_files import find_config

    path = str(find_config(path)) if path else path  # a packaged name (train/pretrain-tiny.yaml) works anywhere
    extra = [f"--stage={stage}"] if stage else []
    model_overrides = [o for o in overrides if parse_override(o)[0].startswith("model.")]
    rest = [o for o in overrides if o not in model_overrides]
    cfg = load(TrainConfig, path, rest + extra)
    if model_overrides and not isinstance(cfg.model, str):  # an inline model section takes them directly
        cfg = load(TrainConfig, path, [*overrides] + extra)
    if isinstance(cfg.model, str):
        # relative to the config file first, then the cwd, then the packaged configs
        model_path = find_config(cfg.model, path, "model")
        raw = read_yaml(model_path)
        if set(raw) == {"model"} and isinstance(raw["model"], dict):
            raw = raw["model"]
        for item in model_overrides:
            key, value = parse_override(item)
            set_dotted(raw, key[len("model."):], value)
        cfg.model = from_dict(ModelConfig, raw, "model")
    if cfg.optim.micro_batch:
        cfg.data = dataclasses.replace(cfg.data, batch_size=cfg.optim.micro_batch)
    if path and not Path(cfg.deepspeed.config).is_absolute():  # the file that names it decides what it means
        with contextlib.suppress(MmrepError):  # a missing file is reported when DeepSpeed starts
            cfg.deepspeed.config = str(find_config(cfg.deepspeed.config, path, "deepspeed.config"))
    return cfg


# ---------------------------------------------------------------------------------------------- setup


def resolve_ds_path(path: str) -> Path:
    from mmrep.config_files import find_config

    return find_config(path, key="deepspeed.config")


def deepspeed_config(cfg: TrainConfig, use_bf16: bool) -> dict[str, Any]:
    """The DeepSpeed JSON with the run's batch, accumulation, clipping, precision and ZeRO stage filled in."""
    path = resolve_ds_path(cfg.deepspeed.config)
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MmrepError(f"deepspeed.config {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    ds = {k: v for k, v in ds.items() if not k.startswith("_")}
    if "optimizer" in ds or "scheduler" in ds:
        raise MmrepError(f"{path}: remove the 'optimizer'/'scheduler' blocks; mmrep passes a torch AdamW and a "
                         "warmup-cosine schedule (set them in the optim section)")
    ds.pop("train_batch_size", None)
    ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
    ds["gradient_accumulation_steps"] = cfg.optim.accum_steps
    ds["gradient_clipping"] = cfg.optim.grad_clip
    ds["bf16"] = {"enabled": use_bf16}
    ds["fp16"] = {"enabled": False}
    zero = ds.setdefault("zero_optimization", {})
    if cfg.deepspeed.zero_stage >= 0:
        zero["stage"] = cfg.deepspeed.zero_stage
    zero.setdefault("stage", 0)
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 10**9)
    return ds


def is_moe(encoder: nn.Module) -> bool:
    cfg = getattr(encoder, "cfg", None)
    if cfg is not None and getattr(getattr(cfg, "moe", None), "enabled", False):  # backbones without MoE refuse it
        return True
    return any(getattr(p, "allreduce", True) is False for p in encoder.parameters())


def param_groups(module: nn.Module, weight_decay: float, lr: float | None = None,
                 lr_scales: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices, none on biases / norms / temperatures (ndim < 2); each split again
    by LR multiplier when `lr_scales` maps parameter-name prefixes to one (the longest prefix wins)."""
    lr_scales = lr_scales or {}
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]

    def under(name: str, prefix: str) -> bool:  # "encoder.layers" covers encoder.layers.*, not encoder.layers_x
        return name == prefix or name.startswith(prefix + ".")

    unused = [k for k in lr_scales if not any(under(n, k) for n, _ in named)]
    if unused:
        raise MmrepError(f"optim.lr_scales: {unused} match no trainable parameter; use name prefixes such as "
                         "'encoder.layers' or 'encoder.vision'")
    buckets: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in named:
        hits = [k for k in lr_scales if under(name, k)]
        scale = lr_scales[max(hits, key=len)] if hits else 1.0
        buckets.setdefault((p.ndim >= 2, scale), []).append(p)
    groups = []
    for (decays, scale), params in sorted(buckets.items(), key=lambda kv: (not kv[0][0], -kv[0][1])):
        group = {"params": params, "weight_decay": weight_decay if decays else 0.0,
                 "name": ("decay" if decays else "no_decay") + (f"@lr×{scale:g}" if scale != 1.0 else "")}
        if scale != 1.0 and lr is not None:
            group["lr"] = lr * scale
        groups.append(group)
    if any(getattr(p, "allreduce", True) is False for p in module.parameters()):
        # DeepSpeed-native expert params must sit in their own groups for ZeRO's expert-parallel reduction
        from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

        groups = split_params_into_different_moe_groups_for_optimizer(groups)
    return groups


def to_device(obj: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """Move tensors inside batches (dataclasses, lists, dicts) to `device`; floats cast to `dtype`."""
    if isinstance(obj, torch.Tensor):
        obj = obj.to(device, non_blocking=True)
        return obj.to(dtype) if dtype is not None and obj.is_floating_point() else obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return type(obj)(**{f.name: to_device(getattr(obj, f.name), device, dtype) for f in dataclasses.fields(obj)})
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(x, device, dtype) for x in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device, dtype) for k, v in obj.items()}
    return obj


def batch_size_of(batch: Any) -> int:
    if hasattr(batch, "__len__"):
        return len(batch)
    return int(getattr(batch, "batch_size"))


class TrainModule(nn.Module):
    """Encoder + objective as one module, so DeepSpeed owns (and checkpoints) both: temperature, queue, W*."""

    def __init__(self, encoder: nn.Module, objective: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.objective = objective
        self.grad_fence = False  # set by the Trainer under ZeRO-2/3 with several ranks (see `_fence`)

    def _fence(self) -> torch.Tensor:
        """A zero-valued term touching every trainable parameter, built before the forward pass.

        ZeRO-2 reduces each gradient when it becomes ready, pairing them across ranks by arrival order.
        The post-train objective skips encoder calls for query views a rank's micro-batch lacks, so the
        autograd graphs (and arrival orders) differ between ranks and gradients get mixed up. Autograd
        runs the oldest nodes last, so this branch delivers every parameter's final gradient
        contribution last, in the same (reverse parameter) order on every rank."""
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.stack([p.reshape(-1)[0] for p in params]).sum() * 0.0

    def forward(self, batch: Any, mode: str = "loss", step: int = 0, total_steps: int = 1,
                cache: list | None = None, index: int = 0):
        """mode "features" -> Features; "loss" -> (LossOutput, Features); "cached" -> the loss over
        `cache` with entry `index` replaced by this batch's live (with-grad) features."""
        from mmrep.train.objectives import concat_features

        fence = self._fence() if self.grad_fence and mode != "features" and torch.is_grad_enabled() else None
        feats = self.objective.features(self.encoder, batch)
        if mode == "features":
            return feats
        full = feats
        if mode == "cached":
            parts = list(cache)
            parts[index] = feats
            full = concat_features(parts)
        out = self.objective.loss(full, step, total_steps)
        if fence is not None:
            out = dataclasses.replace(out, loss=out.loss + fence)
        return out, feats


# ---------------------------------------------------------------------------------------------- trainer


class Trainer:
    """Builds every component from `TrainConfig` and runs the DeepSpeed loop (`fit`)."""

    def __init__(self, cfg: TrainConfig, build_loader: bool = True):
        import deepspeed

        self.cfg = cfg
        self.rank, self.world = distributed.init_deepspeed()
        self.out_dir = Path(cfg.output_dir)
        self.ckpt_dir = cfg.checkpoint_dir
        self._check_output_dir()
        use_bf16 = cfg.deepspeed.precision == "bf16" or (cfg.deepspeed.precision == "auto" and torch.cuda.is_available())
        if use_bf16 and not torch.cuda.is_available():
            raise MmrepError("deepspeed.precision 'bf16' on CPU is ~12x slower than fp32 here; use 'auto' or 'fp32'")
        self.dtype = torch.bfloat16 if use_bf16 else None

        torch.manual_seed(cfg.seed)  # identical init on every rank (DeepSpeed also broadcasts rank 0's)
        self.encoder = self._build_encoder()
        self.model_cfg = self.encoder.cfg
        if cfg.feature_cache.enabled:
            check_cacheable(self.encoder, cfg.stage)
        from mmrep.train.objectives import build_objective

        self.objective = build_objective(cfg.stage, cfg.loss, int(self.encoder.embed_dim))
        module = TrainModule(self.encoder, self.objective)
        self.ds_config = deepspeed_config(cfg, use_bf16)
        zero_stage = self.ds_config["zero_optimization"]["stage"]
        if zero_stage == 3 and is_moe(self.encoder):
            raise MmrepError("ZeRO-3 does not support Mixture-of-Experts models; use deepspeed.zero_stage 0-2 "
                             "(configs/deepspeed/zero2.json) or model.moe.mode=dense")
        if zero_stage == 3 and self.world > 1 and not get_backbone(self.model_cfg.backbone).uniform_calls:
            warnings.warn(f"ZeRO-3 on several ranks: backbone {self.model_cfg.backbone!r} does not run every tower on "
                          "every rank (`uniform_calls`), so a micro-batch that lacks a modality can make gloo/NCCL "
                          "abort. Prefer ZeRO-2 (configs/deepspeed/zero2.json)")
        # ZeRO-3 gathers partitioned parameters inside each module's forward, so a fence over all of them cannot
        # be built there; its gradients are reduced by per-parameter hooks rather than by arrival order
        module.grad_fence = self.world > 1 and zero_stage == 2
        self.encoder.uniform_calls = self.world > 1 and zero_stage == 3  # the same module calls on every rank
        o = cfg.optim
        # fused AdamW: one kernel over all parameters instead of ~10 per tensor (~10% of a small CPU step)
        optimizer = torch.optim.AdamW(param_groups(module, o.weight_decay, o.lr, o.lr_scales), lr=o.lr,
                                      betas=tuple(o.betas), eps=o.eps, fused=True)
        self.train_seconds = 0.0  # training time so far, resumed runs included (the time-based schedule reads it)
        progress = self._time_progress if o.schedule_over == "time" else None
        scheduler = build_scheduler(optimizer, o.warmup_steps, o.total_steps, o.min_lr_ratio, progress)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config)
        self.device = self.engine.device
        if self.world == 1 and zero_stage == 0:
            # one process has no gradients to reduce; DeepSpeed would still flatten them into buckets every step
            self.engine.enable_backward_allreduce = False
        # Feature caching backpropagates the full-batch loss once per micro-batch: encoder weights get
        # their gradient only through that micro-batch's live features (exact), but the objective's own
        # parameters (temperature) see the whole loss every time; scale theirs by 1/accum_steps.
        self._objective_grad_scale = 1.0
        for p in self.engine.module.objective.parameters():
            if p.requires_grad:
                p.register_hook(lambda g: g * self._objective_grad_scale)
        torch.manual_seed(cfg.seed + 1000 * self.rank + 1)  # per-rank randomness (dropout, augmentation)

        self.step = 0  # optimizer steps done
        self.samples_seen = 0  # global samples consumed
        self.data_epoch = 0
        self.batches_in_epoch = 0
        self.resumed_from = ""
        self.flops = StepFlops(self.world)  # FLOPs of one real optimizer step (the first this process runs)
        if cfg.checkpoint.resume:
            self._resume(cfg.checkpoint.resume)
        self.loader = self._build_loader() if build_loader else None

    # -- construction -------------------------------------------------------------------------
    def _check_output_dir(self) -> None:
        """Validate the output folders; nothing is written or deleted here (that waits for `_prepare_run_dir`,
        after the encoder, the data and any checkpoint have been checked)."""
        for what, path in (("output_dir", self.out_dir), ("checkpoint.dir", self.ckpt_dir)):
            if path.exists() and not path.is_dir():
                raise MmrepError(f"{what} {path} is a file; give a folder path for the run")
        resume, overwrite = self.cfg.checkpoint.resume, self.cfg.overwrite
        if resume and self.rank == 0 and not ckpt.list_tags(self.ckpt_dir):
            # an --overwrite start that died before its first checkpoint: the run it replaced is still whole
            restore_aside(self.out_dir, PREVIOUS)
            restore_aside(self.ckpt_dir, PREVIOUS)
        distributed.barrier()
        has_run = (self.ckpt_dir / ckpt.LATEST).exists() or (self.out_dir / "encoder").exists() or \
            bool(ckpt.list_tags(self.ckpt_dir))
        if has_run and not resume and not overwrite:
            raise MmrepError(f"{self.out_dir} already holds a training run; pass --resume latest to continue it, "
                             "--overwrite=true to start over there, or choose another --output_dir")
        entries = self._own_entries()
        # a run from before the marker is recognised by its checkpoints and resolved config
        ours = has_marker(self.out_dir) or (has_run and (self.out_dir / "config.yaml").is_file())
        if entries and not resume and not ours:
            raise MmrepError(f"output_dir {self.out_dir} is a non-empty folder that mmrep did not write (no {MARKER} "
                             "file); choose another --output_dir (--overwrite only replaces mmrep runs)")
        self._start_over = bool(entries) and not resume

    def _own_entries(self) -> list[str]:
        if not self.out_dir.is_dir():
            return []
        return sorted(p.name for p in self.out_dir.iterdir() if p.name not in (PREVIOUS, MARKER))

    def _prepare_run_dir(self) -> None:
        """Rank 0, once everything validated: set an overwritten run aside (deleted at our first checkpoint),
        mark the folder, and record the config (a resume keeps the original and logs its command line)."""
        if self.rank == 0:
            if self._start_over:
                set_aside(self.out_dir, self._own_entries(), PREVIOUS)
                if not self.ckpt_dir.resolve().is_relative_to(self.out_dir.resolve()):
                    set_aside(self.ckpt_dir, [*ckpt.list_tags(self.ckpt_dir), ckpt.LATEST], PREVIOUS)
            write_marker(self.out_dir, "run")
            stale = ckpt.clean_stale(self.ckpt_dir)
            if stale:
                print(f"removed incomplete checkpoint(s) left by an interrupted save: {', '.join(stale)}", flush=True)
            if self.resumed_from and (self.out_dir / "config.yaml").is_file():
                with open(self.out_dir / RESUMES, "a") as f:
                    f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        "from": self.resumed_from, "step": self.step, "argv": sys.argv}) + "\n")
            else:
                save_resolved(self.cfg, self.out_dir)
        distributed.barrier()

    def _first_checkpoint_landed(self) -> None:
        """The new run can be resumed now: the run it replaced is no longer needed."""
        if self.rank == 0 and self._start_over:
            drop_aside(self.out_dir, PREVIOUS)
            drop_aside(self.ckpt_dir, PREVIOUS)
        self._start_over = False

    def _build_encoder(self) -> nn.Module:
        """The encoder (new, or `init_from` a finished run) and its preprocessing (`self.preprocess`)."""
        from mmrep.model.factory import create_model_and_preprocess, load_model_and_preprocess

        data, seed = self.cfg.data, self.cfg.seed + 7 * self.rank
        if self.cfg.init_from:
            src = Path(self.cfg.init_from)
            if (src / "encoder").is_dir():
                src = src / "encoder"
            if not src.is_dir():
                raise MmrepError(f"init_from {self.cfg.init_from!r} is not an encoder dir or a run dir holding "
                                 "encoder/ (point it at a finished pretrain run)")
            encoder, self.preprocess = load_model_and_preprocess(src, data.max_images, seed, data.text_views,
                                                                  augment=data.image_augment)
            encoder.train()
            self.cfg.model = encoder.cfg  # the resolved config records the architecture actually trained
            return encoder
        encoder, self.preprocess = create_model_and_preprocess(self.cfg.model, data.max_images, seed, data.text_views,
                                                               augment=data.image_augment)
        return encoder

    def collator(self, train: bool = True):
        """The model's preprocessing (the factory's, as export uses it) with this run's text views."""
        return self.preprocess.collator(train)

    def _time_progress(self) -> float:
        """The time-based schedule's position: the budget after the feature cache's build (which the budget
        counts, but during which nothing trains)."""
        built = getattr(getattr(self, "loader", None), "build_seconds", 0.0)
        return (self.train_seconds - built) / max(self.cfg.max_train_seconds - built, 1e-9)

    def _build_loader(self):
        from mmrep.data.readers import train_loader

        data = self.cfg.data
        if self.cfg.feature_cache.enabled:
            from mmrep.train.feature_cache import FeatureCacheLoader

            return FeatureCacheLoader(self.cfg.feature_cache, data, self.encoder, self.collator(train=True), self.rank,
                                      self.world, clean=self.collator(train=False))
        if data.resampled and self.step:
            # Resampled streams cannot seek: reseed with the step so a resumed run draws fresh samples
            # instead of replaying the ones it already trained on.
            data = dataclasses.replace(data, seed=data.seed + 7919 * self.step)
        if self.cfg.stage == "align":
            from mmrep.data.pairs import PairLoader

            return PairLoader(self.cfg.pairs, data, self.collator(train=True), self.rank, self.world)
        kind = {"pretrain": "products", "posttrain": "triplets"}[self.cfg.stage]
        return train_loader(data, self.collator(train=True), self.rank, self.world, kind=kind)

    # -- checkpoints --------------------------------------------------------------------------
    def trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "samples_seen": self.samples_seen, "data_epoch": self.data_epoch,
                "batches_in_epoch": self.batches_in_epoch, "world_size": self.world, "stage": self.cfg.stage,
                "train_seconds": self.train_seconds}

    def save_checkpoint(self) -> str:
        # per-rank data position travels with the RNG file; rank 0's copy goes in the client state
        rank_state = {"data_epoch": self.data_epoch, "batches_in_epoch": self.batches_in_epoch}
        return ckpt.save(self.engine, self.ckpt_dir, self.step, self.trainer_state(), self.cfg.checkpoint.keep_last,
                         rank_state)

    def _resume(self, resume: str) -> None:
        tag = ckpt.resolve_tag(self.ckpt_dir, resume)
        state, rank_state = ckpt.load(self.engine, self.ckpt_dir, tag, trust=self.cfg.checkpoint.trust)
        if state.get("world_size", self.world) != self.world:
            raise MmrepError(f"checkpoint {tag} was written by {state['world_size']} ranks, this run has {self.world}; "
                             "resume at the same world size (DeepSpeed's universal checkpoint converts between sizes)")
        self.step = int(state.get("step", 0))
        self.samples_seen = int(state.get("samples_seen", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.data_epoch = int(rank_state.get("data_epoch", state.get("data_epoch", 0)))
        self.batches_in_epoch = int(rank_state.get("batches_in_epoch", state.get("batches_in_epoch", 0)))
        self.resumed_from = tag

    # -- the loop -----------------------------------------------------------------------------
    def _batches(self, batches: Iterable | None) -> Iterator[Any]:
        """Endless per-rank micro-batches; restores the epoch and skips consumed batches on resume."""
        if batches is not None:
            yield from batches
            return
        # Batches of the current epoch consumed before a resume: a one-pass epoch skips them; a resampled one
        # (a fresh draw that cannot seek) yields only the rest, so epoch boundaries match an uninterrupted run.
        resampled = self.cfg.data.resampled and self.cfg.stage != "align" and getattr(self.loader, "resampled", True)
        start = self.batches_in_epoch
        while True:
            self.loader.set_epoch(self.data_epoch)
            got = 0
            for i, batch in enumerate(self.loader):
                if not resampled and i < start:
                    continue
                pos = start + i if resampled else i
                if resampled and pos >= len(self.loader):
                    break
                self.batches_in_epoch = pos + 1
                got += 1
                yield batch
            start = 0
            if got == 0 and self.batches_in_epoch == 0:
                raise MmrepError(f"data.shards {self.cfg.data.shards!r} yielded no batch of {self.cfg.data.batch_size} on "
                                 f"rank {self.rank}; lower data.batch_size or add data")
            self.data_epoch += 1
            self.batches_in_epoch = 0

    def _rank_max(self, *values: float) -> list[float]:
        return distributed.all_reduce_max(torch.tensor(values, dtype=torch.float64)).tolist()

    def _mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average step metrics over ranks (the mean of per-rank losses is the global-batch loss)."""
        if self.world == 1:
            return metrics
        keys = sorted(metrics)
        gathered = distributed.all_gather_objects(keys)
        common = [k for k in keys if all(k in g for g in gathered)]
        t = distributed.all_reduce_sum(torch.tensor([metrics[k] for k in common], dtype=torch.float64))
        return {k: float(v) / self.world for k, v in zip(common, t)}

    def train_step(self, micro: list[Any]) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches; returns averaged loss metrics."""
        from mmrep.train.objectives import concat_features

        engine, total = self.engine, self.cfg.optim.total_steps
        micro = [to_device(b, self.device, self.dtype) for b in micro]
        sums: dict[str, float] = {}
        if self.cfg.optim.accum_keep_negatives and len(micro) > 1:
            with torch.no_grad():
                cache = [engine(b, mode="features").detach() for b in micro]
            self._objective_grad_scale = 1.0 / len(micro)
            try:
                for i, b in enumerate(micro):
                    out, _ = engine(b, mode="cached", step=self.step, total_steps=total, cache=cache, index=i)
                    engine.backward(out.loss, scale_wrt_gas=False)
                    engine.step()
                    _accumulate(sums, out)
            finally:
                self._objective_grad_scale = 1.0
            self.objective.after_step(concat_features(cache))
        else:
            for b in micro:
                out, feats = engine(b, mode="loss", step=self.step, total_steps=total)
                engine.backward(out.loss)
                engine.step()
                _accumulate(sums, out)
                self.objective.after_step(feats.detach())
        return {k: v / len(micro) for k, v in sums.items()}

    def fit(self, batches: Iterable | None = None, on_end=None) -> dict[str, Any]:
        """Train until optim.total_steps, the time budget, or SIGTERM/SIGINT; checkpoint and export at the end.

        `on_end(trainer, logger)` runs after the export, while the W&B run is still open (run summaries)."""
        cfg, o = self.cfg, self.cfg.optim
        self._prepare_run_dir()
        if self.resumed_from and self.step >= o.total_steps:
            # a finished run: nothing to train; export only if the kill came between checkpoint and export
            if not (self.out_dir / "encoder").is_dir():
                self.export_encoder()
            if self.rank == 0:
                print(f"{self.out_dir} already finished at step {self.step} (optim.total_steps {o.total_steps}); "
                      "nothing to do (raise optim.total_steps to train further)", flush=True)
            return {"step": self.step, "stopped_by": "finished", "samples_seen": self.samples_seen, "seconds": 0.0}
        logger = MetricsLogger(cfg.logging, self.out_dir, to_dict(cfg), o.total_steps, self.step, self.rank,
                               append=bool(self.resumed_from))
        if self.resumed_from:
            logger.note(f"resumed from {self.ckpt_dir / self.resumed_from} at step {self.step}")
        stop = {"signal": False}
        previous = {s: signal.signal(s, lambda *_: stop.update(signal=True)) for s in (signal.SIGTERM, signal.SIGINT)} \
            if _main_thread() else {}
        stream = self._batches(batches)
        timer = StepTimer()
        t0 = time.perf_counter()
        seconds_before = self.train_seconds  # from the checkpoint when resumed
        stopped_by = "total_steps"
        last_saved = -1
        try:
            self.engine.train()
            while self.step < o.total_steps:
                micro = []
                for _ in range(o.accum_steps):
                    try:
                        micro.append(next(stream))
                    except StopIteration:
                        break
                if len(micro) < o.accum_steps:
                    stopped_by = "data"
                    break
                timer.data_ready()
                with self.flops.count():
                    metrics = self.train_step(micro)
                n_local = sum(batch_size_of(b) for b in micro)
                self.step += 1
                self.samples_seen += n_local * self.world
                timer.step_done(n_local * self.world)
                # one all-reduce: every rank sees the slowest rank's clock, so LR and stopping agree
                signalled, self.train_seconds = self._rank_max(float(stop["signal"]),
                                                                seconds_before + time.perf_counter() - t0)
                over_time = bool(cfg.max_train_seconds) and self.train_seconds >= cfg.max_train_seconds
                halt = over_time or bool(signalled)
                if self.step % cfg.logging.every_steps == 0 or self.step == o.total_steps or halt:
                    metrics = self._mean_metrics(metrics)
                    metrics.update(timer.pop())
                    metrics.update(lr=self.scheduler.get_last_lr()[0], epoch=self.data_epoch,
                                   samples_seen=self.samples_seen)
                    if self.loader is not None:
                        metrics.update(self.loader.skip_stats.as_dict())
                    logger.log(self.step, metrics, force=halt)
                every = cfg.checkpoint.every_steps
                if every and self.step % every == 0 and self.step < o.total_steps and not halt:
                    self.save_checkpoint()
                    self._first_checkpoint_landed()
                    last_saved = self.step
                if halt:
                    stopped_by = "time budget" if over_time else "signal"
                    break
            if last_saved != self.step:
                self.save_checkpoint()
                self._first_checkpoint_landed()
            self.export_encoder()
            if self.loader is not None and self.loader.skip_stats.total:
                logger.note(self.loader.skip_stats.summary(f"train data (rank {self.rank})"))
            logger.note(f"stopped at step {self.step}/{o.total_steps} ({stopped_by}); "
                        f"checkpoint {self.ckpt_dir / ckpt.tag_for(self.step)}, encoder {self.out_dir / 'encoder'}")
            if on_end is not None:
                on_end(self, logger)
        except BaseException:
            if self._start_over and self.rank == 0:  # died before our first checkpoint: put the old run back
                restore_aside(self.out_dir, PREVIOUS)
                restore_aside(self.ckpt_dir, PREVIOUS)
            raise
        finally:
            logger.close()
            for s, h in previous.items():
                signal.signal(s, h)
        return {"step": self.step, "stopped_by": stopped_by, "samples_seen": self.samples_seen,
                "seconds": time.perf_counter() - t0}

    def export_encoder(self) -> Path:
        """The inference export (`save_encoder`) of the trained encoder into OUT/encoder, on rank 0."""
        from mmrep.model import save_encoder

        encoder = self.engine.module.encoder
        params = list(encoder.parameters())
        if self.ds_config["zero_optimization"]["stage"] == 3:
            import deepspeed

            ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        else:
            ctx = contextlib.nullcontext()
        path = self.out_dir / "encoder"
        with ctx:
            from mmrep.model.moe import gather_experts

            # expert parallelism: every rank contributes its experts; the export is a one-process (ep_size 1) model
            state, gathered = gather_experts(encoder)
            if self.rank == 0:
                # ZeRO keeps parameters as views into flat buffers (which safetensors refuses to save) and
                # may hold them in bf16: export an fp32 copy built from the encoder's own config.
                from mmrep.model import build_encoder

                cfg = encoder.cfg
                if gathered:
                    cfg = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, ep_size=1))
                fresh = build_encoder(cfg, load_pretrained=False)
                fresh.load_state_dict({k: v.detach().float().clone() if v.is_floating_point() else v.detach().clone()
                                       for k, v in state.items()})
                save_encoder(fresh.eval(), path)
        distributed.barrier()
        return path


def _accumulate(sums: dict[str, float], out: Any) -> None:
    """Add one micro-batch's metrics to `sums`; "loss" is always the optimised loss, counted once."""
    for k, v in (getattr(out, "metrics", None) or {}).items():
        if k != "loss" and (isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)):
            sums[k] = sums.get(k, 0.0) + float(v)
    sums["loss"] = sums.get("loss", 0.0) + float(out.loss.detach())


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Build a Trainer and fit it; the whole stage in one call."""
    return Trainer(cfg).fit()
