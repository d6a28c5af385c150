"""HF / sentence-transformers exports load in a Python without mmrep and give mmrep's embeddings (<= 1e-5)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmrep.export.hf import export_hf
from mmrep.model import build_encoder
from interop_helpers import QUERIES, mmrep_embeddings, pixels_for, run_isolated, tiny_config

LOADER = """
import json, torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel
px = load_file("inputs.safetensors")["pixels"]
queries = json.load(open("queries.json"))
model = AutoModel.from_pretrained("{out}", trust_remote_code=True).eval()
res = {{"text": model.encode(texts=queries), "image": model.encode(images=list(px)),
       "both": model.encode(texts=queries, images=list(px))}}
if {st}:
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer("{out}", trust_remote_code=True, device="cpu")
    res["st_text"] = st.encode(queries, convert_to_tensor=True)
    res["st_image"] = st.encode(list(px), convert_to_tensor=True)
    res["st_both"] = st.encode([{{"text": q, "image": p}} for q, p in zip(queries, px)], convert_to_tensor=True)
save_file({{k: v.contiguous() for k, v in res.items()}}, "out.safetensors")
"""


def check_export(tmp_path, cfg, st: bool) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(cfg).eval()
    out = export_hf(encoder, tmp_path / "hf", card="# test card\n")
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_mmrep.MmrepEncoderModel"
    assert str(tmp_path) not in (out / "config.json").read_text()  # no machine paths
    assert "mmrep" not in [line.split()[1].split(".")[0] for line in (out / "modeling_mmrep.py").read_text().splitlines()
                           if line.startswith(("import ", "from "))]
    px = pixels_for(cfg, len(QUERIES))
    save_file({"pixels": px}, str(tmp_path / "inputs.safetensors"))
    (tmp_path / "queries.json").write_text(json.dumps(QUERIES))
    run_isolated(LOADER.format(out=out, st=st), tmp_path)
    got = load_file(str(tmp_path / "out.safetensors"))
    want = {"text": mmrep_embeddings(encoder, QUERIES, None), "image": mmrep_embeddings(encoder, None, px),
            "both": mmrep_embeddings(encoder, QUERIES, px)}
    for key, ref in want.items():
        for prefix in ("", "st_") if st else ("",):
            diff = (got[prefix + key] - ref).abs().max().item()
            assert diff <= 1e-5, f"{prefix + key}: max abs diff {diff}"
    assert not torch.allclose(want["text"], want["image"], atol=1e-3)  # the three views really differ


@pytest.mark.slow
def test_fusion_moe_export_loads_in_transformers_and_sentence_transformers_without_mmrep(tmp_path):
    check_export(tmp_path, tiny_config("tiny.yaml"), st=True)


@pytest.mark.slow
def test_fusion_guided_moe_with_hf_text_tower_export_matches(tmp_path):
    cfg = tiny_config("tiny.yaml", "--moe.mode=guided", "--text.backend=hf", "--fusion.moe_every=2")
    check_export(tmp_path, cfg, st=False)


@pytest.mark.slow
def test_clip_export_loads_without_mmrep(tmp_path):
    check_export(tmp_path, tiny_config("clip-tiny.yaml"), st=True)


@pytest.mark.slow
def test_mllm_export_loads_without_mmrep(tmp_path):
    check_export(tmp_path, tiny_config("mllm-tiny.yaml"), st=False)


MULTI = """
import json
from safetensors.torch import load_file, save_file
from transformers import AutoModel
px = load_file("inputs.safetensors")["pixels"]
queries = json.load(open("queries.json"))
res = {{}}
for name in {names}:
    model = AutoModel.from_pretrained(name, trust_remote_code=True).eval()
    res[name + "/both"] = model.encode(texts=queries, images=list(px))
    products = [{{"title": q, "category": ["Men", "Shirts"], "attributes": {{"color": "red", "size": 40}},
                 "description": "soft"}} for q in queries]
    res[name + "/product"] = model.encode(texts=products, images=list(px), kind="product")
save_file({{k: v.contiguous() for k, v in res.items()}}, "out.safetensors")
"""


@pytest.mark.slow
def test_timm_vision_dense_fusion_and_product_fields_match(tmp_path):
    from mmrep.batch import EncoderInput
    from mmrep.data.tokenize import ProductTokenizer, pad_tokens
    from mmrep.records import Product

    variants = {"timm": tiny_config("tiny.yaml", "--vision.backend=timm"),
                "dense": tiny_config("tiny.yaml", "--moe.mode=dense", "--fusion.layers=1"),
                "guided": tiny_config("tiny.yaml", "--moe.mode=guided")}
    px = pixels_for(variants["timm"], len(QUERIES))
    save_file({"pixels": px}, str(tmp_path / "inputs.safetensors"))
    (tmp_path / "queries.json").write_text(json.dumps(QUERIES))
    encoders = {}
    for name, cfg in variants.items():
        torch.manual_seed(0)
        encoders[name] = build_encoder(cfg).eval()
        export_hf(encoders[name], tmp_path / name)
    run_isolated(MULTI.format(names=list(variants)), tmp_path)
    got = load_file(str(tmp_path / "out.safetensors"))
    for name, enc in encoders.items():
        assert (got[f"{name}/both"] - mmrep_embeddings(enc, QUERIES, px)).abs().max().item() <= 1e-5, name
        tok = ProductTokenizer(enc.cfg.tokenizer)
        products = [Product(id=str(i), title=q, category=["Men", "Shirts"], attributes={"color": "red", "size": "40"},
                            description="soft") for i, q in enumerate(QUERIES)]
        ids, types, mask = pad_tokens([tok.encode_product(p) for p in products])
        with torch.no_grad():
            ref = enc(EncoderInput(px[:, None], torch.ones(3, 1, dtype=torch.bool), ids, types, mask)).embedding
        assert (got[f"{name}/product"] - ref).abs().max().item() <= 1e-5, f"{name} product fields"


BUILD_DEEPSPEED_MOE = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from safetensors.torch import save_file
from interop_helpers import QUERIES, mmrep_embeddings, pixels_for, tiny_config
from mmrep.export.hf import export_hf
from mmrep.model import build_encoder
refs = {{}}
for k in (1, 2):
    torch.manual_seed(0)
    enc = build_encoder(tiny_config("tiny.yaml", "--moe.backend=deepspeed", f"--moe.top_k={{k}}")).eval()
    px = pixels_for(enc.cfg, len(QUERIES))
    export_hf(enc, f"ds{{k}}")
    refs[f"ds{{k}}/both"] = mmrep_embeddings(enc, QUERIES, px)
    refs[f"ds{{k}}/text"] = mmrep_embeddings(enc, QUERIES, None)
save_file({{"pixels": px}}, "inputs.safetensors")
save_file(refs, "refs.safetensors")
json.dump(QUERIES, open("queries.json", "w"))
"""

LOAD_BOTH_AND_TEXT = """
import json
from safetensors.torch import load_file, save_file
from transformers import AutoModel
px = load_file("inputs.safetensors")["pixels"]
queries = json.load(open("queries.json"))
res = {}
for name in ("ds1", "ds2"):
    model = AutoModel.from_pretrained(name, trust_remote_code=True).eval()
    res[name + "/both"], res[name + "/text"] = model.encode(texts=queries, images=list(px)), model.encode(texts=queries)
save_file(res, "out.safetensors")
"""


@pytest.mark.slow
def test_deepspeed_moe_backend_exports_with_its_routing(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(tests).parent))
    proc = subprocess.run([sys.executable, "-c", BUILD_DEEPSPEED_MOE.format(tests=tests)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [k for k in load_file(str(tmp_path / "ds1" / "model.safetensors")) if "deepspeed" in k]
    run_isolated(LOAD_BOTH_AND_TEXT, tmp_path)
    got, refs = load_file(str(tmp_path / "out.safetensors")), load_file(str(tmp_path / "refs.safetensors"))
    for key, ref in refs.items():
        assert (got[key] - ref).abs().max().item() <= 1e-5, key
