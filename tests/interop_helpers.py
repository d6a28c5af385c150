"""Run a loader script in a Python that cannot import mmrep, and mmrep's reference embeddings to compare with."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from mmrep.batch import EncoderInput
from mmrep.config import load
from mmrep.data.tokenize import ProductTokenizer, pad_tokens
from mmrep.model import ModelConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"

QUERIES = ["red cotton shirt", "blue denim jeans for men", "a small lamp"]

# Prepended to every isolated script: the shared venv has mmrep installed (editable), so a meta-path
# finder hides it as if this were a machine without mmrep; then it proves mmrep is out of reach.
GUARD = """
import sys
class _NoMmrep:
    def find_spec(self, name, path=None, target=None):
        if name == "mmrep" or name.startswith("mmrep."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the interop test)")
        return None
sys.meta_path.insert(0, _NoMmrep())
try:
    import mmrep
except ImportError:
    pass
else:
    raise SystemExit(f"mmrep is importable from {mmrep.__file__}: the isolation is broken")
"""


def run_isolated(script: str, cwd: Path, timeout: int = 600) -> str:
    """`python -I` (no PYTHONPATH, no cwd / script dir on sys.path) in `cwd`; HF caches under cwd. -> stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HOME=str(cwd / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-I", "-c", GUARD + textwrap.dedent(script)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"isolated loader failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


def tiny_config(name: str, *overrides: str) -> ModelConfig:
    return load(ModelConfig, CONFIGS / name, overrides)


def pixels_for(cfg, b: int, seed: int = 0) -> torch.Tensor:
    """(B, 3, S, S) normalised-looking pixels, one image per sample."""
    return torch.randn(b, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(seed))


def mmrep_embeddings(encoder, texts: list | None, pixels: torch.Tensor | None) -> torch.Tensor:
    """mmrep's embeddings of queries `texts` and/or one image per sample (the mmrep side of every comparison)."""
    cfg = encoder.cfg
    b = len(texts) if texts is not None else pixels.shape[0]
    if texts is not None:
        tok = ProductTokenizer(cfg.tokenizer)
        ids, types, mask = pad_tokens([tok.encode_query(t) for t in texts])
    else:
        ids, types, mask = (torch.zeros(b, 0, dtype=torch.long), torch.zeros(b, 0, dtype=torch.long),
                            torch.zeros(b, 0, dtype=torch.bool))
    if pixels is not None:
        px, im = pixels[:, None], torch.ones(b, 1, dtype=torch.bool)
    else:
        px, im = torch.zeros(b, 0, 3, cfg.image_size, cfg.image_size), torch.zeros(b, 0, dtype=torch.bool)
    with torch.no_grad():
        return encoder.eval()(EncoderInput(px, im, ids, types, mask)).embedding
