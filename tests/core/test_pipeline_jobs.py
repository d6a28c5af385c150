"""The main job's steps print a command that asks for exactly what they run: each typed job's `argv()`,
parsed by that command's own front door, gives the same job (config objects included) back."""

from __future__ import annotations

import dataclasses
import shlex

from mmrep.application.cli import CtrJob, QuantizeJob, parse_ctr, parse_quantize
from mmrep.application.ctr import CtrConfig
from mmrep.application.quantize import QuantizeConfig
from mmrep.cli import resolve
from mmrep.cli_support import shell
from mmrep.evaluation import exchange_rate as er
from mmrep.evaluation.cli import BenchJob, ImageSearchJob, MbeJob, parse_image_search, parse_mbe
from mmrep.evaluation.image_search import SearchConfig
from mmrep.evaluation.mbe import MbeConfig
from mmrep.export import cli as export_cli
from mmrep.export.embeddings import ExportConfig
from mmrep.synth import cli as synth_cli


def reparse(argv, parse):
    route, rest = resolve(shlex.split(shell(argv))[1:])  # through the shell quoting and the router
    assert " ".join(argv[: len(route.split())]) == route
    return parse(rest)


def test_every_step_prints_the_command_that_reruns_it(tmp_path):
    ctr = CtrConfig(seeds=1, split_time=123.5, epochs=2)
    cases = [
        (synth_cli.WorldJob(str(tmp_path / "w o"), "small", 3, ["--world.n_items=160"], overwrite=True, quiet=True),
         synth_cli.parse),
        (BenchJob(str(tmp_path / "bench"), from_world=str(tmp_path / "w"), split="val", overwrite=True), parse_mbe),
        (BenchJob(str(tmp_path / "bench"), from_shards=str(tmp_path / "s"), max_items=60, overwrite=True), parse_mbe),
        (MbeJob(str(tmp_path / "bench"), str(tmp_path / "mbe"), [("dir", "a/encoder"), ("config", "tiny.yaml@2")],
                overwrite=True, mbe=MbeConfig(ks=[1, 10], dim=64)), parse_mbe),
        (ImageSearchJob(str(tmp_path / "is"), [("dir", "a/encoder")], "items/test", "crop", overwrite=True,
                        search=SearchConfig(query_chunk=7)), parse_image_search),
        (QuantizeJob("emb", "codes", QuantizeConfig(levels=2, centroids=4, vq_k=5), overwrite=True), parse_quantize),
        (CtrJob("log.csv", "ctr", ["id", "codes+att"], "emb", "codes", ctr, overwrite=True), parse_ctr),
        (er.ExchangeJob("x", [("a", "v/a"), ("b", "v/b")], log="log.csv", segments="s.csv", pairs="p.csv",
                        run=er.ExchangeRun(ctr=ctr, quantize=QuantizeConfig(levels=2, eval_queries=0)), overwrite=True),
         er.parse),
    ]
    for job, parse in cases:
        back = reparse(job.argv(), parse)
        if isinstance(job, MbeJob) and back.mbe == MbeConfig() and job.mbe is None:
            back.mbe = None
        if isinstance(job, ImageSearchJob):  # k follows --ks
            back.search = dataclasses.replace(back.search, k=job.search.k)
        assert back == job, (job.argv(), back)
    cfg = ExportConfig(encoder="e n", shards="s", out="o", overwrite=True, progress=False, faiss="flat", dim=32)
    assert reparse(export_cli.export_argv(cfg), export_cli.parse) == cfg
