"""Every malformed input to `mmrep train` ends as one line on stderr with exit 2 (the CLI's own path, run
in-process), before anything is written."""

from __future__ import annotations

import logging

import pytest

from mmrep.cli import main as mmrep_main


def _train(th, world, out, *extra, stage="pretrain"):
    return ["train", "--stage", stage, "--config", str(th.repo / "configs" / "train" / f"{stage}-tiny.yaml"),
            *th.overrides(world, out, stage), *extra]


def _one_line_exit_2(argv, capsys, match: str) -> str:
    assert mmrep_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mmrep: error: ") and match in err, err
    return err


def test_output_dir_is_a_file(th, tiny_world, tmp_path, capsys):
    afile = tmp_path / "run"
    afile.write_text("not a folder")
    _one_line_exit_2(_train(th, tiny_world, afile), capsys, "is a file")
    assert afile.read_text() == "not a folder"


def test_triplet_shards_for_pretraining_stop_at_once(th, tiny_world, tmp_path, capsys, caplog):
    caplog.set_level(logging.WARNING)
    out = tmp_path / "run"
    argv = _train(th, tiny_world, out, f"--data.shards={tiny_world / 'triplets' / 'train'}")
    _one_line_exit_2(argv, capsys, "holds triplets, but this stage reads products")
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]
    argv = _train(th, tiny_world, out, f"--data.shards={tiny_world / 'items' / 'train'}", "--init_from=",
                  stage="posttrain")
    _one_line_exit_2(argv, capsys, "holds products, but this stage reads triplets")
    assert not out.exists()


def test_bad_yaml_through_train(th, tiny_world, tmp_path, capsys):
    cfg = tmp_path / "cycle.yaml"
    cfg.write_text(f"_base_: {cfg.name}\n")
    _one_line_exit_2(["train", "--config", str(cfg)], capsys, "cycle")
    cfg.write_text("stage: pretrain\nseed: 1\nseed: 2\n")
    _one_line_exit_2(["train", "--config", str(cfg)], capsys, "duplicate key 'seed'")


@pytest.mark.slow
def test_resume_with_a_changed_model_shape(th, tiny_world, tmp_path, capsys):
    out = tmp_path / "run"
    assert mmrep_main(_train(th, tiny_world, out, "--optim.total_steps=1")) == 0
    capsys.readouterr()
    err = _one_line_exit_2(_train(th, tiny_world, out, "--optim.total_steps=2", "--model.embed_dim=32",
                                  "--model.matryoshka_dims=[16,32]", "--loss.matryoshka_dims=[16,32]",
                                  "--resume", "latest"), capsys, "holds another model than this config builds")
    assert "size mismatch" in err
