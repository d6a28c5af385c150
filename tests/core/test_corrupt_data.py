"""Every command that reads shards survives the same damage the same way: 5% corrupt samples (bad images,
a truncated JPEG, bad JSON) and one truncated shard give exact skip counts, one summary line, and a strict
mode that stops with one line."""

from __future__ import annotations

import json
import re

import pytest

from corrupt_helpers import CORRUPT, GOOD, LOST, N, good_ids, write_corrupt_set
from embedding_helpers import encoder_dir  # noqa: F401  (fixture)
from mmrep.cli import main as mmrep_main

SUMMARY = (f"skipped {CORRUPT + LOST} samples: {CORRUPT} corrupt (bad_image: 3, bad_json: 2), "
           f"{LOST} lost with 1 damaged shard(s) (truncated_tar: 1)")


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    return write_corrupt_set(tmp_path_factory.mktemp("damaged") / "train")


def _summary_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if "skipped" in line and "samples" in line]


def test_inspect_counts_what_the_damaged_shard_lost(damaged, capsys):
    assert mmrep_main(["data", "inspect", str(damaged), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)["sets"]["train"]
    assert (s["products"], s["expected"], s["skipped_samples"], s["damaged_shards"]) == (GOOD, N, CORRUPT + LOST, 1)
    assert s["corrupt"] == {"bad_image": 3, "bad_json": 2, "truncated_tar": 1, "lost_in_damaged_shard": LOST}
    assert mmrep_main(["data", "inspect", str(damaged)]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(f"{GOOD} samples, {CORRUPT + LOST} corrupt or lost (1 damaged shards)")


def test_loaders_count_the_same(damaged):
    from mmrep.data.collate import Collator
    from mmrep.data.readers import DataConfig, SkipStats, eval_loader, iter_products
    from mmrep.data.tokenize import ProductTokenizer, TokenizerConfig
    from mmrep.data.transforms import ImageTransform

    stats = SkipStats()
    assert [p.id for p in iter_products(damaged, stats=stats, verify_images=True)] == good_ids()
    assert stats.summary() == SUMMARY
    collator = Collator(ProductTokenizer(TokenizerConfig(context_length=16)), ImageTransform(16, [0.5] * 3, [0.5] * 3), 2)
    loader = eval_loader(DataConfig(shards=str(damaged), num_workers=2, batch_size=16), collator)  # 2 worker processes
    ids = sorted(i for b in loader for i in b.ids)
    assert ids == good_ids() and loader.skip_stats.summary() == SUMMARY


def test_export_make_bench_eval_and_image_search(damaged, encoder_dir, tmp_path, capsys):  # noqa: F811
    emb = tmp_path / "emb"
    assert mmrep_main(["export", "--encoder", str(encoder_dir), "--shards", str(damaged), "--out", str(emb),
                       "--no-progress", "--part-size", "8"]) == 0
    out = capsys.readouterr().out
    assert _summary_lines(out) == [f"export {damaged}: {SUMMARY}"], out
    index = json.loads((emb / "index.json").read_text())
    assert (index["count"], index["skipped"]) == (GOOD, CORRUPT + LOST)
    assert mmrep_main(["export", "--encoder", str(encoder_dir), "--shards", str(damaged), "--out", str(tmp_path / "s"),
                       "--no-progress", "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"corrupt sample in shard \S+train-000000.tar, sample item-003", err)
    assert mmrep_main(["export", "--encoder", str(encoder_dir), "--shards", str(damaged / "train-000004.tar"),
                       "--out", str(tmp_path / "s4"), "--no-progress", "--strict"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"mmrep: error: corrupt sample in shard \S+train-000004.tar: ReadError: unexpected end of data "
                        r"\(strict mode; [^\n]*\)\n", err), err

    bench = tmp_path / "bench"
    assert mmrep_main(["eval", "mbe", "--make-bench", "--from-shards", str(damaged), "--out", str(bench)]) == 0
    out = capsys.readouterr().out
    assert _summary_lines(out) == [f"make-bench {damaged}: {SUMMARY}"], out
    assert json.loads((bench / "benchmark.json").read_text())["counts"]["items"] == GOOD
    assert mmrep_main(["eval", "mbe", "--make-bench", "--from-shards", str(damaged), "--out", str(tmp_path / "b2"),
                       "--strict"]) == 2
    assert capsys.readouterr().err.count("\n") == 1

    # the benchmark's own gallery damaged the same way: eval mbe skips, counts, and drops the orphaned queries
    import shutil

    shutil.rmtree(bench / "items")
    shutil.copytree(damaged, bench / "items")
    assert mmrep_main(["eval", "mbe", "--bench", str(bench), "--encoder", str(encoder_dir), "--out",
                       str(tmp_path / "mbe")]) == 0
    out = capsys.readouterr().out
    assert _summary_lines(out) == [f"benchmark {bench}: {SUMMARY}"], out
    report = json.loads((tmp_path / "mbe" / "report.json").read_text())
    assert report["encoders"][0]["results"]["retrieval"]["t2mm"]["gallery"] == GOOD

    assert mmrep_main(["eval", "image-search", "--encoder", str(encoder_dir), "--items", str(damaged), "--ks", "1,5",
                       "--out", str(tmp_path / "is")]) == 0
    out = capsys.readouterr().out
    assert _summary_lines(out) == [f"image-search {damaged}: {SUMMARY}"], out
    assert json.loads((tmp_path / "is" / "image_search.json").read_text())["queries"] == GOOD
    assert mmrep_main(["eval", "image-search", "--encoder", str(encoder_dir), "--items", str(damaged), "--ks", "1",
                       "--out", str(tmp_path / "is2"), "--strict"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_augment(damaged, tmp_path, capsys):
    from mmrep.augment.config import AugmentConfig
    from mmrep.augment.job import augment_shards

    manifest = augment_shards(AugmentConfig(shards=str(damaged), out=str(tmp_path / "aug"), images_per_product=0,
                                            titles_per_product=0, filter="none"))
    assert _summary_lines(capsys.readouterr().out) == [f"augment {damaged}: {SUMMARY}"]
    assert manifest["count"] == GOOD and manifest["augment"]["input_skipped"] == CORRUPT + LOST
