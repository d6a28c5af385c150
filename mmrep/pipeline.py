"""The main job: every stage end to end, as the documented commands run in order.

world -> pretrain -> post-train -> item alignment -> benchmark -> per version (untrained, pretrain,
post-train, aligned): export + MBE + image search -> QARM codes -> CTR (ID / frozen / codes) ->
exchange rate -> report folder (Markdown + PNG plots). Each step calls a stage function with its typed
job (config objects) and gets a typed result back; it prints the equivalent `mmrep` command (the job's
`argv()`), so a user can rerun any step alone. Training runs in a subprocess (see `Job.subprocess`).
A step that finished leaves a marker holding its result, so rerunning the job resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from mmrep import config as cfgmod
from mmrep.cli_support import shell
from mmrep.distributed import LAUNCHER_ENV
from mmrep.errors import MmrepError
from mmrep.fsutil import atomic_write


@dataclass
class WorldSection:
    size: str = "tiny"  # synth preset; ignored when `path` names an existing world
    seed: int = 0
    path: str = ""  # use this world instead of generating one
    overrides: list[str] = field(default_factory=list)  # e.g. ["--world.n_items=800"]


@dataclass
class StageSection:
    config: str = ""
    overrides: list[str] = field(default_factory=list)
    enabled: bool = True


@dataclass
class CatalogueSection:
    """A real catalogue instead of the built-in world: import -> pretrain -> export -> evaluate.

    Catalogues carry no behaviour logs, so post-training, alignment, codes/CTR and the exchange rate
    (which need queries, purchases and clicks) are skipped.
    """

    preset: str = ""  # e.g. "fashion" (Fashion Product Images); empty = use the built-in world
    source: str = ""  # the preset's data folder (default: ../shared/data/<dataset>)
    max_eval_items: int = 0  # 0 = the whole evaluation split


@dataclass
class ApplicationSection:
    levels: int = 3
    centroids: int = 16
    vq_k: int = 25
    ctr_features: list[str] = field(default_factory=lambda: ["id", "emb", "codes"])
    ctr_seeds: int = 3
    ctr_epochs: int = 0  # 0: the CTR model's default


@dataclass
class RunConfig:
    output_dir: str = "runs/main"
    world: WorldSection = field(default_factory=WorldSection)
    catalogue: CatalogueSection = field(default_factory=CatalogueSection)
    pretrain: StageSection = field(default_factory=lambda: StageSection("configs/train/pretrain-tiny.yaml"))
    posttrain: StageSection = field(default_factory=lambda: StageSection("configs/train/posttrain-tiny.yaml"))
    align: StageSection = field(default_factory=lambda: StageSection("configs/train/align-tiny.yaml"))
    untrained_model: str = "configs/model/tiny.yaml"  # the random-init baseline column
    seed: int = 0  # seed of the random init (the pretrain config's seed should match)
    eval_split: str = "test"
    image_search_query_set: str = "augment"
    application: ApplicationSection = field(default_factory=ApplicationSection)
    exchange_rate: bool = True

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise MmrepError("output_dir must name the folder for the run")


R = TypeVar("R")


class Job:
    """Runs steps in order, skipping those whose marker says they finished (the marker keeps the result)."""

    def __init__(self, cfg: RunConfig, fresh: bool = False):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.marks = self.out / ".steps"
        if fresh and self.marks.exists():
            for m in self.marks.iterdir():
                m.unlink()
        self.marks.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}

    def step(self, name: str, argv: list[str], fn: Callable[[], R], result: type[R] | None = None) -> R | None:
        """Run `fn` (a stage function applied to its job), printing `mmrep ARGV`, the command that does the
        same alone. Its typed result (a dataclass of type `result`) is kept in the marker, so a resumed job
        gets it back without running the step again."""
        mark = self.marks / f"{name}.done"
        shown = shell(argv)
        if mark.exists():
            meta = json.loads(mark.read_text())
            if result is None or "result" in meta:
                print(f"[{name}] done earlier, skipping  ({shown})")
                return cfgmod.from_dict(result, meta["result"]) if result is not None else None
            # a marker from before results were kept: run the step again to get its result
        print(f"\n[{name}] {shown}", flush=True)
        t0 = time.perf_counter()
        value = fn()
        self._done(name, mark, t0, value)
        return value

    def step_subprocess(self, name: str, argv: list[str]) -> None:
        """A step run as its own `mmrep` process: training. DeepSpeed initialises a process group (its
        port, rank and world size live in the environment and in torch.distributed for the life of the
        process) and holds the training run's memory; a child process, as the DeepSpeed launcher starts
        it, begins from a clean state and returns all of it when it ends. Its result is on disk (the run
        folder's encoder/ and summary.json)."""
        mark = self.marks / f"{name}.done"
        shown = shell(argv)
        if mark.exists():
            print(f"[{name}] done earlier, skipping  ({shown})")
            return
        print(f"\n[{name}] {shown}", flush=True)
        t0 = time.perf_counter()
        # a fresh process group: this process's own (e.g. an in-process run before it) holds its port
        env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
        code = subprocess.run([sys.executable, "-m", "mmrep.cli", *argv], env=env).returncode
        if code != 0:
            raise MmrepError(f"step '{name}' failed (exit {code}); fix it and rerun the same command to resume")
        self._done(name, mark, t0)

    def call(self, name: str, fn, *args) -> None:
        """An in-process step that has no command of its own."""
        mark = self.marks / f"{name}.done"
        if mark.exists():
            print(f"[{name}] done earlier, skipping")
            return
        print(f"\n[{name}]", flush=True)
        t0 = time.perf_counter()
        fn(*args)
        self._done(name, mark, t0)

    def _done(self, name: str, mark: Path, t0: float, result: Any = None) -> None:
        self.timings[name] = round(time.perf_counter() - t0, 1)
        # the 1-minute load average as the step ends: on a shared machine it says how far to trust the time
        meta: dict[str, Any] = {"seconds": self.timings[name], "load": round(os.getloadavg()[0], 1)}
        if result is not None:
            meta["result"] = cfgmod.to_dict(result)
        with atomic_write(mark, "w") as f:
            json.dump(meta, f, default=_plain)

    def step_times(self) -> list[tuple[str, float, float | None]]:
        """(step, seconds, load average at its end) of every finished step, in the order they finished."""
        marks = sorted(self.marks.glob("*.done"), key=lambda m: m.stat().st_mtime)
        rows = []
        for m in marks:
            meta = json.loads(m.read_text())
            rows.append((m.name.removesuffix(".done"), float(meta.get("seconds", 0.0)), meta.get("load")))
        return rows

    def seconds(self, name: str) -> float:
        mark = self.marks / f"{name}.done"
        return json.loads(mark.read_text()).get("seconds", 0.0) if mark.exists() else 0.0


def _plain(v: Any) -> Any:
    """numpy scalars / arrays in a result -> JSON values."""
    return v.tolist() if hasattr(v, "tolist") else str(v)


def _repo_path(p: str) -> str:
    """Config paths in run configs: from the cwd when they exist there, else among the packaged configs."""
    if Path(p).exists() or Path(p).is_absolute():
        return p
    from mmrep.config_files import find_config

    try:
        return str(find_config(p))
    except MmrepError:
        return p


def run(cfg: RunConfig, fresh: bool = False) -> dict[str, Any]:
    from mmrep.application.cli import CtrJob, CtrResult, QuantizeJob, QuantizeResult, quantize_codes, train_ctr
    from mmrep.application.ctr import CtrConfig
    from mmrep.application.quantize import QuantizeConfig
    from mmrep.evaluation.cli import BenchJob, BenchResult, MbeJob, MbeReport, evaluate_mbe, make_bench
    from mmrep.evaluation.exchange_rate import ExchangeJob, ExchangeResult, ExchangeRun, exchange_rate_report
    from mmrep.synth.cli import WorldJob, WorldResult, synthesize

    job = Job(cfg, fresh)
    out = job.out
    cfgmod.save_resolved(cfg, out, "run.yaml")
    if cfg.catalogue.preset:
        return run_catalogue(cfg, job)
    world = Path(cfg.world.path) if cfg.world.path else out / "world"
    if not cfg.world.path:
        wjob = WorldJob(str(world), cfg.world.size, cfg.world.seed, list(cfg.world.overrides), overwrite=True,
                        quiet=True)
        split_time = job.step("world", wjob.argv(), lambda: synthesize(wjob), WorldResult).ctr_split_time
    elif not world.is_dir():
        raise MmrepError(f"world.path {world} does not exist; generate it with `mmrep data synth` or unset it")
    else:  # a world made earlier: its summary says where the CTR split is
        split_time = json.loads((world / "world.json").read_text()).get("ctr_split_time")

    # Version 0 is the random init that pretraining starts from (same config, same seed).
    untrained = out / "untrained" / "encoder"
    job.call("untrained", save_untrained, _repo_path(cfg.untrained_model), cfg.seed, untrained)
    versions: dict[str, str] = {"untrained": str(untrained)}  # name -> encoder dir
    prev = ""
    for stage, section, shards in (("pretrain", cfg.pretrain, world / "items" / "train"),
                                   ("posttrain", cfg.posttrain, world / "triplets" / "train"),
                                   ("align", cfg.align, world / "items" / "train")):
        if not section.enabled:
            continue
        run_dir = out / stage
        argv = ["train", "--stage", stage, "--config", _repo_path(section.config), f"--output_dir={run_dir}",
                f"--data.shards={shards}", "--overwrite=true", f"--init_from={prev}"]
        if stage == "align":
            argv.append(f"--pairs={world / 'pairs.csv'}")
        job.step_subprocess(stage, argv + list(section.overrides))
        versions[stage] = str(run_dir / "encoder")
        prev = str(run_dir / "encoder")

    bjob = BenchJob(str(out / "bench"), from_world=str(world), split=cfg.eval_split, overwrite=True)
    job.step("bench", bjob.argv(), lambda: make_bench(bjob), BenchResult)

    mjob = MbeJob(bjob.out, str(out / "eval" / "mbe"), [("dir", enc) for enc in versions.values()], overwrite=True)
    mbe = job.step("mbe", mjob.argv(), lambda: evaluate_mbe(mjob), MbeReport)

    version_dirs = {}
    for name, enc in versions.items():
        vdir = out / "versions" / name
        for split in ("train", "val", "test"):
            _export(job, f"export-{name}-{split}", enc, world / "items" / split, out / "embeddings" / name / split)
        search = _image_search(job, f"image-search-{name}", enc, world / "items" / cfg.eval_split,
                               cfg.image_search_query_set, out / "eval" / "image-search" / name)
        _merge_version(out / "embeddings" / name, vdir, mbe.summary(name), search, name)
        version_dirs[name] = vdir

    final = list(versions)[-1]
    app = cfg.application
    # The world's own CTR split: later impressions are the test set, incl. items launched after it.
    ctr_cfg = CtrConfig(seeds=app.ctr_seeds, split_time=split_time if split_time else None,
                        **({"epochs": app.ctr_epochs} if app.ctr_epochs else {}))
    codes = out / "codes"
    qjob = QuantizeJob(str(version_dirs[final]), str(codes), QuantizeConfig(levels=app.levels, centroids=app.centroids,
                                                                             vq_k=app.vq_k), overwrite=True)
    job.step("quantize", qjob.argv(), lambda: quantize_codes(qjob), QuantizeResult)
    cjob = CtrJob(str(world / "interactions.csv"), str(out / "ctr"), list(app.ctr_features), str(version_dirs[final]),
                  str(codes), ctr_cfg, overwrite=True)
    job.step("ctr", cjob.argv(), lambda: train_ctr(cjob), CtrResult)

    if cfg.exchange_rate and len(version_dirs) >= 2:
        segments = _segments_csv(world, out / "segments.csv")
        base = ExchangeRun()
        ejob = ExchangeJob(str(out / "exchange-rate"), [(n, str(d)) for n, d in version_dirs.items()],
                           log=str(world / "interactions.csv"), segments=str(segments), pairs=str(world / "pairs.csv"),
                           run=ExchangeRun(base.exchange, dataclasses.replace(base.quantize, levels=app.levels,
                                                                              centroids=app.centroids, vq_k=app.vq_k),
                                           ctr_cfg),
                           overwrite=True)
        job.step("exchange-rate", ejob.argv(), lambda: exchange_rate_report(ejob), ExchangeResult)
    from mmrep.report import write_run_report

    return write_run_report(out, list(versions), job)


def _export(job: Job, name: str, encoder: str, shards: Path, out: Path, faiss: str = "none") -> None:
    from mmrep.export.cli import ExportResult, export_argv, export_embeddings
    from mmrep.export.embeddings import ExportConfig

    ecfg = ExportConfig(encoder=encoder, shards=str(shards), out=str(out), overwrite=True, progress=False, faiss=faiss)
    job.step(name, export_argv(ecfg), lambda: export_embeddings(ecfg), ExportResult)


def _image_search(job: Job, name: str, encoder: str, items: Path, query_set: str, out: Path):
    from mmrep.evaluation.cli import ImageSearchJob, image_search
    from mmrep.evaluation.image_search import ImageSearchReport

    sjob = ImageSearchJob(str(out), [("dir", encoder)], str(items), query_set, overwrite=True)
    return job.step(name, sjob.argv(), lambda: image_search(sjob), ImageSearchReport)


def run_catalogue(cfg: RunConfig, job: Job) -> dict[str, Any]:
    """The main job on a real catalogue: import, pretrain, evaluate untrained vs trained side by side."""
    from mmrep.data.cli import ImportJob, ImportResult, run_import
    from mmrep.evaluation.cli import BenchJob, BenchResult, MbeJob, MbeReport, evaluate_mbe, make_bench

    out, cat = job.out, cfg.catalogue
    shards = out / "catalogue"
    ijob = ImportJob(str(shards), cat.preset, cat.source, overwrite=True)
    job.step("import", ijob.argv(), lambda: run_import(ijob), ImportResult)
    untrained = out / "untrained" / "encoder"
    job.call("untrained", save_untrained, _repo_path(cfg.untrained_model), cfg.seed, untrained)
    versions = {"untrained": str(untrained)}
    if cfg.pretrain.enabled:
        run_dir = out / "pretrain"
        job.step_subprocess("pretrain", ["train", "--stage", "pretrain", "--config", _repo_path(cfg.pretrain.config),
                                         f"--output_dir={run_dir}", f"--data.shards={shards / 'train'}",
                                         "--overwrite=true", *cfg.pretrain.overrides])
        versions["pretrain"] = str(run_dir / "encoder")
    bjob = BenchJob(str(out / "bench"), from_shards=str(shards / cfg.eval_split), max_items=cat.max_eval_items,
                    overwrite=True)
    job.step("bench", bjob.argv(), lambda: make_bench(bjob), BenchResult)
    mjob = MbeJob(bjob.out, str(out / "eval" / "mbe"), [("dir", e) for e in versions.values()], overwrite=True)
    job.step("mbe", mjob.argv(), lambda: evaluate_mbe(mjob), MbeReport)
    for name, enc in versions.items():
        _image_search(job, f"image-search-{name}", enc, out / "bench" / "items", cfg.image_search_query_set,
                      out / "eval" / "image-search" / name)
    final = list(versions)[-1]
    _export(job, f"export-{final}", versions[final], out / "bench" / "items", out / "embeddings" / final, faiss="flat")
    from mmrep.report import write_run_report

    return write_run_report(out, list(versions), job)


def save_untrained(model_config: str, seed: int, out: Path) -> None:
    import torch

    from mmrep.model import ModelConfig, build_encoder, save_encoder

    torch.manual_seed(seed)
    save_encoder(build_encoder(cfgmod.load(ModelConfig, model_config)), out)


def _merge_version(emb_root: Path, vdir: Path, mbe_summary: dict[str, float], search: Any, name: str) -> None:
    """One folder per representation version: all items' embeddings + its intermediate metrics (the MBE
    summary and the image-search recall at the largest gallery)."""
    import numpy as np

    from mmrep.export import load_embeddings
    from mmrep.export.embeddings import save_embeddings

    ids, arrays = [], []
    for split in ("train", "val", "test"):
        i, a = load_embeddings(emb_root / split)
        ids += [str(x) for x in i]
        arrays.append(a)
    save_embeddings(vdir, ids, np.concatenate(arrays), name=name, overwrite=True)
    metrics: dict[str, float] = dict(mbe_summary)
    if search.rows:
        metrics |= {f"image-search {k}": v for k, v in search.rows[-1].items() if k.startswith("R@")}
    with atomic_write(vdir / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=1)


def _segments_csv(world: Path, out: Path) -> Path:
    """item -> top-level category, for the exchange rate's sign stability across categories."""
    import csv

    from mmrep.data.readers import iter_products

    with atomic_write(out, "w") as f:
        w = csv.writer(f)
        w.writerow(["item", "segment"])
        for split in ("train", "val", "test"):
            for p in iter_products(world / "items" / split):
                w.writerow([p.id, p.category[0] if p.category else "unknown"])
    return out


def main(argv: list[str]) -> int:
    import typing

    from mmrep.cli_support import CommandParser

    hints = typing.get_type_hints(RunConfig)
    sections = {f.name: hints[f.name] for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(hints[f.name])}
    top = [f.name for f in dataclasses.fields(RunConfig) if f.name not in sections]
    p = CommandParser("mmrep run", "the main job: the whole pipeline end to end", sections=sections, top_level=top,
                      config_help="YAML run config, e.g. configs/run/world-tiny.yaml")
    p.add_argument("--fresh", action="store_true", help="redo every step (default: resume after finished steps)")
    call = p.invoke(argv)
    a = call.args
    cfg = call.build(RunConfig)
    t0 = time.perf_counter()
    summary = run(cfg, fresh=a.fresh)
    print(summary["table"])
    if summary.get("timings"):
        print("\n" + summary["timings"])
    print(f"\nreport: {summary['report']}  ({time.perf_counter() - t0:.0f} s)")
    return 0
