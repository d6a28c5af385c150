"""The main job: every stage end to end, as the documented commands run in order.

world -> pretrain -> post-train -> item alignment -> benchmark -> per version (untrained, pretrain,
post-train, aligned): export + MBE + image search -> QARM codes -> CTR (ID / frozen / codes) ->
exchange rate -> report folder (Markdown + PNG plots). Each step is one `mmrep` command (printed, so
a user can rerun it alone); training runs in a subprocess (as the DeepSpeed launcher would), the rest
in this process. A step that finished leaves a marker, so rerunning the job resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrep import config as cfgmod
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


class Job:
    """Runs steps in order, skipping those whose marker says they finished."""

    def __init__(self, cfg: RunConfig, fresh: bool = False):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.marks = self.out / ".steps"
        if fresh and self.marks.exists():
            for m in self.marks.iterdir():
                m.unlink()
        self.marks.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}

    def step(self, name: str, argv: list[str], subprocess_: bool = False) -> None:
        mark = self.marks / f"{name}.done"
        shown = "mmrep " + " ".join(shlex.quote(a) for a in argv)
        if mark.exists():
            print(f"[{name}] done earlier, skipping  ({shown})")
            return
        print(f"\n[{name}] {shown}", flush=True)
        t0 = time.perf_counter()
        if subprocess_:
            # a fresh process group: this process's own (e.g. an in-process run before it) holds its port
            dist_vars = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
            env = {k: v for k, v in os.environ.items() if k not in dist_vars}
            code = subprocess.run([sys.executable, "-m", "mmrep.cli", *argv], env=env).returncode
        else:
            from mmrep.cli import main as cli_main

            code = cli_main(argv)
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

    def _done(self, name: str, mark: Path, t0: float) -> None:
        self.timings[name] = round(time.perf_counter() - t0, 1)
        # the 1-minute load average as the step ends: on a shared machine it says how far to trust the time
        mark.write_text(json.dumps({"seconds": self.timings[name], "load": round(os.getloadavg()[0], 1)}))

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
    job = Job(cfg, fresh)
    out = job.out
    cfgmod.save_resolved(cfg, out, "run.yaml")
    if cfg.catalogue.preset:
        return run_catalogue(cfg, job)
    world = Path(cfg.world.path) if cfg.world.path else out / "world"
    if not cfg.world.path:
        job.step("world", ["data", "synth", "--size", cfg.world.size, "--seed", str(cfg.world.seed), "--out", str(world),
                           "--overwrite", "--quiet", *cfg.world.overrides])
    elif not world.is_dir():
        raise MmrepError(f"world.path {world} does not exist; generate it with `mmrep data synth` or unset it")

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
        job.step(stage, argv + list(section.overrides), subprocess_=True)
        versions[stage] = str(run_dir / "encoder")
        prev = str(run_dir / "encoder")

    bench = out / "bench"
    job.step("bench", ["eval", "mbe", "--make-bench", "--from-world", str(world), "--split", cfg.eval_split,
                       "--out", str(bench), "--overwrite"])

    encoder_args = [a for enc in versions.values() for a in ("--encoder", enc)]
    job.step("mbe", ["eval", "mbe", "--bench", str(bench), *encoder_args, "--out", str(out / "eval" / "mbe"), "--overwrite"])
    mbe_report = json.loads((out / "eval" / "mbe" / "report.json").read_text())

    version_dirs = {}
    for name, enc in versions.items():
        vdir = out / "versions" / name
        enc_args = ["--encoder", enc]
        for split in ("train", "val", "test"):
            job.step(f"export-{name}-{split}", ["export", *enc_args, "--shards", str(world / "items" / split),
                                                "--out", str(out / "embeddings" / name / split), "--overwrite",
                                                "--no-progress"])
        job.step(f"image-search-{name}", ["eval", "image-search", *enc_args, "--items", str(world / "items" / cfg.eval_split),
                                          "--query-set", cfg.image_search_query_set,
                                          "--out", str(out / "eval" / "image-search" / name), "--overwrite"])
        _merge_version(out / "embeddings" / name, vdir, mbe_report, name, out / "eval" / "image-search" / name)
        version_dirs[name] = vdir

    final = list(versions)[-1]
    app = cfg.application
    # The world's own CTR split: later impressions are the test set, incl. items launched after it.
    split_time = json.loads((world / "world.json").read_text()).get("ctr_split_time")
    app_overrides = [f"--ctr.seeds={app.ctr_seeds}"] + ([f"--ctr.split_time={split_time}"] if split_time else [])
    if app.ctr_epochs:
        app_overrides.append(f"--ctr.epochs={app.ctr_epochs}")
    codes = out / "codes"
    job.step("quantize", ["quantize", "--emb", str(version_dirs[final]), "--out", str(codes), "--levels", str(app.levels),
                          "--centroids", str(app.centroids), "--vq-k", str(app.vq_k), "--overwrite"])
    ctr_args = ["ctr", "--log", str(world / "interactions.csv"), "--features", ",".join(app.ctr_features),
                "--emb", str(version_dirs[final]), "--codes", str(codes), "--out", str(out / "ctr"), "--overwrite",
                *app_overrides]
    job.step("ctr", ctr_args)

    if cfg.exchange_rate and len(version_dirs) >= 2:
        segments = _segments_csv(world, out / "segments.csv")
        job.step("exchange-rate", ["eval", "exchange-rate", "--versions",
                                   ",".join(f"{n}={d}" for n, d in version_dirs.items()),
                                   "--log", str(world / "interactions.csv"), "--segments", str(segments),
                                   "--pairs", str(world / "pairs.csv"), "--out", str(out / "exchange-rate"),
                                   "--overwrite", f"--quantize.levels={app.levels}",
                                   f"--quantize.centroids={app.centroids}", f"--quantize.vq_k={app.vq_k}",
                                   *app_overrides])
    from mmrep.report import write_run_report

    return write_run_report(out, list(versions), job)


def run_catalogue(cfg: RunConfig, job: Job) -> dict[str, Any]:
    """The main job on a real catalogue: import, pretrain, evaluate untrained vs trained side by side."""
    out, cat = job.out, cfg.catalogue
    shards = out / "catalogue"
    job.step("import", ["data", "import", "--preset", cat.preset, "--out", str(shards), "--overwrite",
                        *(["--source", cat.source] if cat.source else [])])
    untrained = out / "untrained" / "encoder"
    job.call("untrained", save_untrained, _repo_path(cfg.untrained_model), cfg.seed, untrained)
    versions = {"untrained": str(untrained)}
    if cfg.pretrain.enabled:
        run_dir = out / "pretrain"
        job.step("pretrain", ["train", "--stage", "pretrain", "--config", _repo_path(cfg.pretrain.config),
                              f"--output_dir={run_dir}", f"--data.shards={shards / 'train'}", "--overwrite=true",
                              *cfg.pretrain.overrides], subprocess_=True)
        versions["pretrain"] = str(run_dir / "encoder")
    bench = out / "bench"
    job.step("bench", ["eval", "mbe", "--make-bench", "--from-shards", str(shards / cfg.eval_split), "--out", str(bench),
                       "--overwrite", *(["--max-items", str(cat.max_eval_items)] if cat.max_eval_items else [])])
    job.step("mbe", ["eval", "mbe", "--bench", str(bench), *[a for e in versions.values() for a in ("--encoder", e)],
                     "--out", str(out / "eval" / "mbe"), "--overwrite"])
    for name, enc in versions.items():
        job.step(f"image-search-{name}", ["eval", "image-search", "--encoder", enc, "--items", str(bench / "items"),
                                          "--query-set", cfg.image_search_query_set,
                                          "--out", str(out / "eval" / "image-search" / name), "--overwrite"])
    final = list(versions)[-1]
    job.step(f"export-{final}", ["export", "--encoder", versions[final], "--shards", str(bench / "items"),
                                 "--out", str(out / "embeddings" / final), "--overwrite", "--faiss", "flat"])
    from mmrep.report import write_run_report

    return write_run_report(out, list(versions), job)


def save_untrained(model_config: str, seed: int, out: Path) -> None:
    import torch

    from mmrep.model import ModelConfig, build_encoder, save_encoder

    torch.manual_seed(seed)
    save_encoder(build_encoder(cfgmod.load(ModelConfig, model_config)), out)


def _merge_version(emb_root: Path, vdir: Path, mbe_report: dict, name: str, search_dir: Path) -> None:
    """One folder per representation version: all items' embeddings + its intermediate metrics."""
    import numpy as np

    from mmrep.export import load_embeddings
    from mmrep.export.embeddings import save_embeddings

    ids, arrays = [], []
    for split in ("train", "val", "test"):
        i, a = load_embeddings(emb_root / split)
        ids += [str(x) for x in i]
        arrays.append(a)
    save_embeddings(vdir, ids, np.concatenate(arrays), name=name, overwrite=True)
    metrics: dict[str, float] = {}
    enc = next((e for e in mbe_report["encoders"] if e["name"].split("/")[0] == name), None)
    if enc is not None:
        metrics |= {k: v for k, v in enc["results"]["summary"].items() if v is not None}
    search = json.loads((search_dir / "image_search.json").read_text())
    rows = search.get("rows") or search.get("report", {}).get("rows", [])
    if rows:
        last = rows[-1]
        metrics |= {f"image-search {k}": v for k, v in last.items() if k.startswith("R@")}
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
    import dataclasses
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
