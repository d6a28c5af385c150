"""Export throughput vs a bare forward pass of the same encoder over the same decoded batches.

Data: the first --items products of the real Fashion Product Images catalogue (../shared/data),
imported with `mmrep data import --preset fashion` into one shard set. Encoder: a model config
(default `configs/model/small.yaml`, random init: the same cost as a trained one), one process.
The two sides alternate over rounds (the machine is shared: compare the per-round ratios):
  export: `mmrep.export.embeddings.export` end to end: read the tars, decode + resize + tokenize,
          forward, write the parts (what `mmrep export` runs, minus loading the encoder);
  bare:   the same records, decoded and collated into the same batches *before* the clock starts;
          timed: only `encoder(batch)` under `torch.inference_mode()` for every batch.
Also prints export's peak RSS growth (sampled every 50 ms): it is bounded by the batch and one
part's embeddings, not by --items (run twice with different --items to see it).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_export.py                 # 2048 items, small, 3 rounds
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_export.py --items 8192 --rounds 1
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def make_shards(root: Path, items: int, source: Path) -> Path:
    from mmrep.data.catalog import import_catalog, resolve_import_config

    have = {r["id"] for r in csv.DictReader(open(source / "splits.csv")) if r["has_image"] in ("1", "True", "true")}
    with open(source / "styles.csv", newline="") as f, open(root / "styles.csv", "w", newline="") as out:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(out, reader.fieldnames)
        writer.writeheader()
        n = 0
        for row in reader:
            if row["id"] in have:
                writer.writerow(row)
                n += 1
                if n == items:
                    break
    cfg = resolve_import_config("fashion", str(source), table=str(root / "styles.csv"), splits_csv="",
                                default_split="all", shard_size=1024)
    import_catalog(cfg, root / "shards", overwrite=True)
    return root / "shards" / "all"


class PeakRss:
    """Peak resident memory of this process while the block runs (sampled every 50 ms)."""

    def __enter__(self):
        import psutil

        self.proc, self.base, self.peak, self.stop = psutil.Process(), 0, 0, threading.Event()
        self.base = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def main() -> None:
    from mmrep.data.readers import decode_record, iter_raw, resolve_shards
    from mmrep.export.embeddings import ExportConfig, export
    from mmrep.inference import open_encoder, prepare_record, select_view

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=2048)
    p.add_argument("--encoder-config", default=str(REPO / "configs/model/small.yaml"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--part-size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--source", default=str(REPO.parent / "shared/data/fashion_product_images_small"))
    p.add_argument("--workdir", default="")
    args = p.parse_args()
    source = Path(args.source)
    if not (source / "styles.csv").is_file():
        source = Path("/work/shared/data/fashion_product_images_small")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="mmrep-bench-export-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        shards = make_shards(root, args.items, source)
        handle = open_encoder(config=args.encoder_config, device="cpu")
        # The bare side's input: the same records, decoded and collated into the same batches up front.
        prepared = [prepare_record(handle, decode_record(s)) for url in resolve_shards(str(shards)) for s in iter_raw(url)]
        batches = [handle.collator.collate_products(prepared[i : i + args.batch_size]).inputs
                   for i in range(0, len(prepared), args.batch_size)]
        n = len(prepared)
        del prepared
        print(f"{n} Fashion items, encoder {args.encoder_config} (random init), batch {args.batch_size}, part size "
              f"{args.part_size}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
              f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}")
        with torch.inference_mode():  # warm-up (first-call allocations) outside the clock
            handle.encoder(select_view(batches[0], "mm"))
        print("\n| round | export (items/s) | bare forward (items/s) | export / bare | export peak RSS growth (MiB) | load avg |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        ratios = []
        for r in range(args.rounds):
            res = {}
            for side in (("export", "bare") if r % 2 == 0 else ("bare", "export")):
                t0 = time.perf_counter()
                if side == "export":
                    cfg = ExportConfig(shards=str(shards), out=str(root / "emb"), batch_size=args.batch_size,
                                       part_size=args.part_size, overwrite=True, progress=False, device="cpu")
                    with PeakRss() as mem:
                        index = export(cfg, handle)
                    assert index["count"] == n
                    res["rss"] = (mem.peak - mem.base) / 2**20
                else:
                    with torch.inference_mode():
                        for b in batches:
                            handle.encoder(select_view(b, "mm")).embedding.float().numpy()
                res[side] = n / (time.perf_counter() - t0)
            ratios.append(res["export"] / res["bare"])
            print(f"| {r} | {res['export']:.1f} | {res['bare']:.1f} | {ratios[-1]:.2f}x | {res['rss']:.0f} | "
                  f"{os.getloadavg()[0]:.1f} |", flush=True)
        ratios.sort()
        print(f"\nexport / bare forward, median of {len(ratios)} rounds: {ratios[len(ratios) // 2]:.2f}x")
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
