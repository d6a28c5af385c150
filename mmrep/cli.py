"""The `mmrep` command: a thin router to each stage's entry function.

Each route names `module:function`; the function takes the remaining argv and returns an exit code.
Modules are imported lazily so `mmrep --help` stays fast and one stage's deps don't load another's.
"""

from __future__ import annotations

import importlib
import sys

from mmrep.errors import MmrepError

ROUTES: dict[str, tuple[str, str]] = {
    "data import": ("mmrep.data.cli:import_main", "catalogue CSV/JSONL + images -> WebDataset shards"),
    "data inspect": ("mmrep.data.cli:inspect_main", "counts, field coverage, image sizes, corrupt samples"),
    "data synth": ("mmrep.synth.cli:main", "generate the built-in product world"),
    "train": ("mmrep.train.cli:main", "pretrain / post-train / item-align under DeepSpeed"),
    "augment": ("mmrep.augment.cli:main", "offline image-text co-augmentation -> new shards"),
    "export": ("mmrep.export.cli:main", "item / query embeddings from a checkpoint"),
    "export-model": ("mmrep.export.model_cli:main", "encoder / checkpoint -> transformers, sentence-transformers, open_clip"),
    "eval mbe": ("mmrep.evaluation.cli:mbe_main", "MBE2.0-protocol retrieval, classification, attributes"),
    "eval image-search": ("mmrep.evaluation.cli:image_search_main", "query image -> item recall@K"),
    "eval exchange-rate": ("mmrep.evaluation.exchange_rate:main", "which intermediate metric predicts CTR gains"),
    "quantize": ("mmrep.application.cli:quantize_main", "QARM residual k-means + VQ codes from embeddings"),
    "ctr": ("mmrep.application.cli:ctr_main", "downstream CTR model with ID / embedding / code features"),
    "sweep": ("mmrep.sweeps.cli:main", "run a W&B sweep file as wandb agent would, then fit scaling laws"),
    "sweep fit": ("mmrep.sweeps.cli:fit_main", "fit scaling laws to a sweep folder's runs"),
    "run": ("mmrep.pipeline:main", "the main job: the whole pipeline end to end"),
    "configs list": ("mmrep.config_files:list_main", "list the packaged configs (copy one to start)"),
    "configs show": ("mmrep.config_files:show_main", "print a packaged config (`> my.yaml` to edit a copy)"),
    "configs path": ("mmrep.config_files:path_main", "where a packaged config lives"),
}


def usage() -> str:
    width = max(len(k) for k in ROUTES)
    lines = ["usage: mmrep <command> [args]  (mmrep <command> --help: its options; mmrep <group> --help: its "
             "subcommands; mmrep --version)", "",
             "Every command reads --config FILE and --section.key=value overrides the same way (its --help lists them).",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in ROUTES.items()]
    return "\n".join(lines)


def groups() -> dict[str, list[str]]:
    """Command groups (`data`, `eval`, `configs`, `sweep`): first word -> its two-word routes."""
    out: dict[str, list[str]] = {}
    for name in ROUTES:
        if " " in name:
            out.setdefault(name.split()[0], []).append(name)
    return out


def group_usage(group: str) -> str:
    names = groups()[group]
    width = max(len(n) for n in names)
    lines = [f"usage: mmrep {group} <subcommand> [args]  (mmrep {group} <subcommand> --help for its options)", "",
             "subcommands:"]
    lines += [f"  {name:<{width}}  {ROUTES[name][1]}" for name in names]
    return "\n".join(lines)


def version() -> str:
    """The installed distribution's version (the package's own when run from a checkout)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    import mmrep

    try:
        return dist_version("mmrep")
    except PackageNotFoundError:
        return mmrep.__version__


def resolve(argv: list[str]) -> tuple[str, list[str]]:
    """Longest command prefix of argv that names a route."""
    for n in (2, 1):
        name = " ".join(argv[:n])
        if len(argv) >= n and name in ROUTES:
            return name, argv[n:]
    raise MmrepError(f"unknown command {' '.join(argv[:2])!r}; run `mmrep --help` for the list")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"mmrep {version()}")
        return 0
    if argv[0] in groups() and argv[0] not in ROUTES and (len(argv) == 1 or argv[1] in ("-h", "--help", "help")):
        # a group alone lists its subcommands (exit 2 without --help: a subcommand is missing)
        asked = len(argv) > 1
        print(group_usage(argv[0]), file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    try:
        name, rest = resolve(argv)
        target, _ = ROUTES[name]
        module, func = target.split(":")
        code = getattr(importlib.import_module(module), func)(rest)
        return int(code or 0)
    except MmrepError as e:
        print(f"mmrep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmrep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
