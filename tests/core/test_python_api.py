"""The README's "Python API" block runs as written, against a tiny encoder saved where it looks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from mmrep.model import build_encoder, save_encoder

from embedding_helpers import image_bytes, tiny_config

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Python API section holds exactly one python block"
    return blocks[0]


def test_the_readme_python_api_example_runs(tmp_path, monkeypatch):
    torch.manual_seed(0)
    save_encoder(build_encoder(tiny_config()).eval(), tmp_path / "runs" / "pretrain-tiny" / "encoder")
    (tmp_path / "shirt.jpg").write_bytes(image_bytes(7))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_example(), str(README), "exec"), scope)

    d = scope["handle"].embed_dim
    assert scope["items"].shape == (1, d) and scope["titles"].shape == (1, 8)
    assert scope["photos"].shape == (1, d) and scope["queries"].shape == (1, d) and scope["scores"].shape == (1, 1)
    for name in ("items", "titles", "photos", "queries"):
        assert scope[name].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(scope[name], axis=1), 1.0, atol=1e-5)
    # the views really differ: text-only, image-only and multimodal are three different embeddings
    text_full = scope["embed_records"](scope["handle"], [scope["shirt"]], view="text")
    np.testing.assert_allclose(scope["titles"], text_full[:, :8] / np.linalg.norm(text_full[:, :8]), atol=1e-5)
    assert not np.allclose(scope["items"], text_full, atol=1e-3)
    assert not np.allclose(scope["items"], scope["photos"], atol=1e-3)
