"""Offline image-text co-augmentation (MOON2.0): `mmrep augment` reads a product shard set and writes a
NEW one with enriched titles and expanded images, after an image-title consistency filter.

Augmenters are pluggable (`register_augmenter`): a title augmenter maps a product to a new title, an
image augmenter maps (PIL image, product) to a new image or None. Built-ins keep the product's
entities (colour, category, attributes); `hf_vlm` rewrites titles with any local Hugging Face
vision-language model. A consistency scorer (a trained mmrep encoder dir or an open_clip `local-dir:`
checkpoint) drops inconsistent generations. A trained scorer gives matched image-title pairs only a
slightly higher cosine than mismatched ones (0.79 vs 0.71 on the built-in world), so an absolute
threshold either keeps everything or drops good generations; the default rule is relative: products
are scored in batches of `filter_batch`, the other products' originals are the mismatched candidates,
and a generation is kept only if its matched cosine beats `filter_beat_frac` of them, or (a weak
scorer) nearly as many as the product's original pair does (`rank`); or exceeds their mean by
`filter_margin` (`margin`); `threshold` is the absolute rule.
Evaluation splits are never augmented (that would leak generated data into the benchmark).

Each output product keeps its id: title = the best accepted rewrite (else the original), images =
originals followed by the accepted generated images.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Protocol, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from mmrep import config
from mmrep.errors import MmrepError
from mmrep.fsutil import atomic_dir, check_replaceable
from mmrep.records import Product, sample_key

EVAL_SPLITS = frozenset({"val", "valid", "validation", "dev", "test", "testing", "eval", "evaluation", "heldout"})


# ----------------------------------------------------------------------------- config
@dataclass
class AugmentConfig:
    """The `augment` config section."""

    shards: str = ""  # input shard set (a split folder with manifest.json)
    out: str = ""  # output root: the new set is written to <out>/<split>/
    split: str = ""  # output split name (default: the input's)
    title_augmenters: list[str] = field(default_factory=lambda: ["attribute_title"])
    image_augmenters: list[str] = field(default_factory=lambda: ["flip", "crop_scale", "background_swap", "color_jitter"])
    titles_per_product: int = 1  # candidate rewrites per product (the best accepted one is kept)
    images_per_product: int = 2  # generated images per product (each from a random image augmenter)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-augmenter kwargs, e.g. {hf_vlm: {path: ...}}
    filter: Literal["none", "mmrep", "open_clip"] = "none"
    filter_checkpoint: str = ""  # mmrep encoder dir, or open_clip `local-dir:PATH` / PATH
    filter_rule: Literal["rank", "margin", "threshold"] = "rank"
    filter_beat_frac: float = 0.9  # rank: share of in-batch mismatched candidates the matched cosine must beat
    filter_rank_slack: float = 0.1  # rank: how far below its original's beat fraction a generation may fall
    filter_margin: float = 0.05  # margin: matched cosine - mean mismatched cosine must reach this
    filter_threshold: float = 0.2  # threshold: image-title cosine below which a generation is dropped
    filter_batch: int = 64  # products scored together (each other's mismatched candidates)
    seed: int = 0
    shard_size: int = 1000
    max_products: int = 0  # 0 = all
    unsafe_allow_eval_split: bool = False  # UNSAFE: augmenting val/test leaks generated data into evaluation
    strict: bool = False  # fail on the first corrupt input sample / damaged shard instead of skipping and counting

    def __post_init__(self) -> None:
        for key in ("titles_per_product", "images_per_product", "max_products"):
            if getattr(self, key) < 0:
                raise MmrepError(f"augment.{key} must be >= 0, got {getattr(self, key)}")
        if self.shard_size < 1:
            raise MmrepError(f"augment.shard_size must be >= 1, got {self.shard_size}")
        if self.filter_batch < 2:
            raise MmrepError(f"augment.filter_batch must be >= 2 (products are each other's mismatched candidates), "
                             f"got {self.filter_batch}")
        if not 0.0 <= self.filter_beat_frac <= 1.0:
            raise MmrepError(f"augment.filter_beat_frac must be in [0, 1], got {self.filter_beat_frac}")
        for name in [*self.title_augmenters, *self.image_augmenters]:
            if name not in AUGMENTERS:
                raise MmrepError(f"augmenter {name!r} is not registered (known: {', '.join(sorted(AUGMENTERS))})")
        for name in self.title_augmenters:
            if AUGMENTERS[name].kind != "title":
                raise MmrepError(f"augment.title_augmenters: {name!r} is an image augmenter")
        for name in self.image_augmenters:
            if AUGMENTERS[name].kind != "image":
                raise MmrepError(f"augment.image_augmenters: {name!r} is a title augmenter")
        if self.filter != "none" and not self.filter_checkpoint:
            raise MmrepError(f"augment.filter is {self.filter!r}: set augment.filter_checkpoint to its checkpoint")


@dataclass
class AugmentRun:
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# ----------------------------------------------------------------------------- registry
class TitleAugmenter(Protocol):
    kind: str  # "title"

    def __call__(self, product: Product, rng: random.Random) -> str: ...


class ImageAugmenter(Protocol):
    kind: str  # "image"

    def __call__(self, image: Image.Image, product: Product, rng: random.Random) -> Image.Image | None: ...


AUGMENTERS: dict[str, Any] = {}


def register_augmenter(name: str) -> Callable[[type], type]:
    """Class decorator: `@register_augmenter("mine")` on a class with `kind = "title" | "image"`."""
    def add(cls: type) -> type:
        if getattr(cls, "kind", None) not in ("title", "image"):
            raise TypeError(f"augmenter {name!r} needs a class attribute kind = 'title' or 'image'")
        AUGMENTERS[name] = cls
        return cls
    return add


def build_augmenter(name: str, options: dict[str, Any] | None = None) -> TitleAugmenter | ImageAugmenter:
    if name not in AUGMENTERS:
        raise MmrepError(f"augmenter {name!r} is not registered (known: {', '.join(sorted(AUGMENTERS))})")
    try:
        return AUGMENTERS[name](**(options or {}))
    except TypeError as e:
        raise MmrepError(f"augment.options.{name}: {e}") from None


def product_entities(p: Product) -> list[str]:
    """The entities a rewrite must keep: word-valued attributes and the finest category (numbers such
    as prices are not title entities)."""
    ents = [str(v).strip() for v in p.attributes.values() if str(v).strip() and not _is_number(str(v))]
    if p.category:
        ents.append(str(p.category[-1]).strip())
    seen: set[str] = set()
    return [e for e in ents if not (e.lower() in seen or seen.add(e.lower()))]


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def ensure_entities(title: str, p: Product) -> str:
    """Append any entity of `p` missing from `title` (case-insensitive)."""
    missing = [e for e in product_entities(p) if e.lower() not in title.lower()]
    return " ".join([title.strip(), *missing]).strip()


# ----------------------------------------------------------------------------- built-in title augmenters
@register_augmenter("attribute_title")
class AttributeTitle:
    """Attribute-preserving rewrite: the original title plus the attributes/category it does not name yet,
    in a random template (a title that already names them all is left as is)."""

    kind = "title"
    TEMPLATES = ("{title}, {extras}", "{extras} {title}", "{title} - {extras}", "{title} ({extras})")

    def __call__(self, product: Product, rng: random.Random) -> str:
        extras = [e for e in product_entities(product) if e.lower() not in product.title.lower()]
        if not extras:  # the title already names every entity: nothing to enrich
            return product.title
        rng.shuffle(extras)
        title = rng.choice(self.TEMPLATES).format(title=product.title.strip(), extras=" ".join(extras)).strip(" ,-")
        return ensure_entities(title, product)


@register_augmenter("hf_vlm")
class HFVisionLanguageTitle:
    """Title rewrite by a local Hugging Face vision-language model (AutoModelForImageTextToText).

    Entities missing from the generated text are appended, so the colour/category survive."""

    kind = "title"
    PROMPT = ("Rewrite this product title for an online shop. Keep the brand, colour, category and every "
              "attribute. Title: {title}. Attributes: {attributes}. Answer with the new title only.")

    def __init__(self, path: str = "", max_new_tokens: int = 32, prompt: str = ""):
        if not path or not Path(path).is_dir():
            raise MmrepError(f"augment.options.hf_vlm.path {path!r} is not a directory; point it at a local Hugging Face "
                             "vision-language model (config.json + weights + processor files)")
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=False)
            self.model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True,
                                                                     trust_remote_code=False).eval()
        except (OSError, ValueError) as e:
            raise MmrepError(f"cannot load a vision-language model from {path}: {str(e).splitlines()[0]}") from None
        self.max_new_tokens = max_new_tokens
        self.prompt = prompt or self.PROMPT

    def __call__(self, product: Product, rng: random.Random) -> str:
        import torch

        text = self.prompt.format(title=product.title, attributes=", ".join(f"{k}: {v}" for k, v in product.attributes.items()))
        content: list[dict[str, str]] = [{"type": "text", "text": text}]
        images = [_decode(product.images[0])] if product.images else None
        if images:
            content.insert(0, {"type": "image"})
        chat = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        inputs = self.processor(text=chat, images=images, return_tensors="pt")
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        return ensure_entities(new.strip().splitlines()[0] if new.strip() else product.title, product)


# ----------------------------------------------------------------------------- built-in image augmenters
@register_augmenter("flip")
class Flip:
    kind = "image"

    def __call__(self, image: Image.Image, product: Product, rng: random.Random) -> Image.Image:
        return ImageOps.mirror(image)


@register_augmenter("crop_scale")
class CropScale:
    """Random crop covering `min_area`..1 of the image, resized back (the subject stays mostly in view)."""

    kind = "image"

    def __init__(self, min_area: float = 0.7):
        if not 0 < min_area <= 1:
            raise MmrepError(f"augment.options.crop_scale.min_area must be in (0, 1], got {min_area}")
        self.min_area = min_area

    def __call__(self, image: Image.Image, product: Product, rng: random.Random) -> Image.Image:
        w, h = image.size
        side = rng.uniform(self.min_area, 1.0) ** 0.5
        cw, ch = max(1, round(w * side)), max(1, round(h * side))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        return image.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC)


@register_augmenter("background_swap")
class BackgroundSwap:
    """Replace a plain studio background by a random light grey; the product's pixels are untouched.

    The background colour is the border's median; background = pixels within `tolerance` of it that
    connect to the border (a flood fill, so white parts inside the product stay). Skipped (None) when
    under `min_border` of the border is plain (a scene, not a studio shot) or when the background
    would cover more than `max_fraction` (no separable subject)."""

    kind = "image"

    def __init__(self, tolerance: float = 30.0, min_border: float = 0.75, max_fraction: float = 0.9):
        self.tolerance, self.min_border, self.max_fraction = tolerance, min_border, max_fraction

    def __call__(self, image: Image.Image, product: Product, rng: random.Random) -> Image.Image | None:
        a = np.asarray(image.convert("RGB"), dtype=np.float32)
        border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
        bg = np.median(border, axis=0)
        if (np.linalg.norm(border - bg, axis=-1) < self.tolerance).mean() < self.min_border:
            return None
        near = np.linalg.norm(a - bg, axis=-1) < self.tolerance
        mask = np.zeros_like(near)
        mask[0], mask[-1], mask[:, 0], mask[:, -1] = near[0], near[-1], near[:, 0], near[:, -1]
        while True:  # grow from the border through background-coloured pixels (4-neighbourhood)
            grown = mask.copy()
            grown[1:] |= mask[:-1]
            grown[:-1] |= mask[1:]
            grown[:, 1:] |= mask[:, :-1]
            grown[:, :-1] |= mask[:, 1:]
            grown &= near
            if (grown == mask).all():
                break
            mask = grown
        if mask.mean() > self.max_fraction or not mask.any():
            return None
        # a light, low-saturation backdrop so that it never reads as the product's colour
        grey = rng.randint(190, 250)
        a[mask] = np.array([min(255, max(0, grey + rng.randint(-12, 12))) for _ in range(3)], dtype=np.float32)
        return Image.fromarray(a.clip(0, 255).astype(np.uint8))


@register_augmenter("color_jitter")
class ColorJitter:
    """Brightness / contrast / saturation jitter, no hue shift: the colour attribute stays plausible."""

    kind = "image"

    def __init__(self, brightness: float = 0.15, contrast: float = 0.15, saturation: float = 0.1):
        if max(brightness, contrast, saturation) > 0.3:
            raise MmrepError("augment.options.color_jitter: keep brightness/contrast/saturation <= 0.3 "
                             "so that the product's colour attribute stays true")
        self.factors = (brightness, contrast, saturation)

    def __call__(self, image: Image.Image, product: Product, rng: random.Random) -> Image.Image:
        b, c, s = self.factors
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(1 - b, 1 + b))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(1 - c, 1 + c))
        return ImageEnhance.Color(image).enhance(rng.uniform(1 - s, 1 + s))


# ----------------------------------------------------------------------------- consistency filter
class ConsistencyScorer(Protocol):
    def image_embeddings(self, images: Sequence[bytes]) -> np.ndarray:
        """(N, D) L2-normalised image embeddings."""

    def text_embeddings(self, titles: Sequence[str]) -> np.ndarray:
        """(N, D) L2-normalised title embeddings, in the images' space."""

    def score(self, images: Sequence[bytes], titles: Sequence[str]) -> np.ndarray:
        """Cosine similarity of each (image, title) pair: (N,)."""


class OpenClipScorer:
    """open_clip model from `local-dir:PATH` (open_clip_config.json + open_clip_model.safetensors)."""

    def __init__(self, checkpoint: str):
        import open_clip

        path = checkpoint.removeprefix("local-dir:")
        if not Path(path, "open_clip_config.json").is_file():
            raise MmrepError(f"augment.filter_checkpoint {checkpoint!r}: no open_clip_config.json there; pass an "
                             "open_clip local-dir checkpoint (e.g. from `export_open_clip`)")
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}")
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")

    def image_embeddings(self, images: Sequence[bytes]) -> np.ndarray:
        import torch

        with torch.no_grad():
            pix = torch.stack([self.preprocess(_decode(b)) for b in images])
            return self.model.encode_image(pix, normalize=True).float().numpy()

    def text_embeddings(self, titles: Sequence[str]) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model.encode_text(self.tokenizer(list(titles)), normalize=True).float().numpy()

    def score(self, images: Sequence[bytes], titles: Sequence[str]) -> np.ndarray:
        return (self.image_embeddings(images) * self.text_embeddings(titles)).sum(-1)


class MmrepScorer:
    """A trained mmrep encoder dir: cosine of the image-only and title-only embeddings."""

    def __init__(self, checkpoint: str):
        from mmrep.model.encoder import load_encoder
        from mmrep.model.preprocess import build_preprocess

        self.encoder = load_encoder(checkpoint)
        self.collator = build_preprocess(self.encoder.cfg, max_images=1)

    def image_embeddings(self, images: Sequence[bytes]) -> np.ndarray:
        import torch

        inputs = self.collator.products([Product(id=str(i), images=[b]) for i, b in enumerate(images)]).inputs
        with torch.no_grad():
            return self.encoder(inputs).embedding.float().numpy()

    def text_embeddings(self, titles: Sequence[str]) -> np.ndarray:
        import torch

        inputs = self.collator.products([Product(id=str(i), title=t) for i, t in enumerate(titles)]).inputs
        with torch.no_grad():
            return self.encoder(inputs).embedding.float().numpy()

    def score(self, images: Sequence[bytes], titles: Sequence[str]) -> np.ndarray:
        return (self.image_embeddings(images) * self.text_embeddings(titles)).sum(-1)


def build_scorer(kind: str, checkpoint: str) -> ConsistencyScorer | None:
    if kind == "none":
        return None
    if kind == "open_clip":
        return OpenClipScorer(checkpoint)
    if kind == "mmrep":
        return MmrepScorer(checkpoint)
    raise MmrepError(f"augment.filter must be 'none', 'mmrep' or 'open_clip', got {kind!r}")


# ----------------------------------------------------------------------------- the job
def _decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _encode(image: Image.Image, ext: str) -> tuple[bytes, str]:
    buf = io.BytesIO()
    if ext.lower() in ("jpg", "jpeg"):
        image.save(buf, "JPEG", quality=95)
        return buf.getvalue(), "jpg"
    image.save(buf, "PNG")
    return buf.getvalue(), "png"


def beat_fraction(matched: float, mismatched: np.ndarray) -> float | None:
    """Share of the mismatched candidates' cosines below the matched one (None without candidates)."""
    return float((mismatched < matched).mean()) if mismatched.size else None


def keep_generation(matched: float, mismatched: np.ndarray, cfg: AugmentConfig,
                    original: float | None = None) -> tuple[bool, bool]:
    """(keep, judged) for one generation from its matched cosine and its cosines to the mismatched
    candidates (the batch's other products). Relative rules cannot judge without candidates: kept.

    rank: the generation must beat `filter_beat_frac` of the candidates, or, when the product's own
    original pair (`original`: its beat fraction) ranks lower than that under this scorer, as many as
    the original less `filter_rank_slack`: a generation is dropped for being less consistent than the
    data it came from, not for the scorer's own limits."""
    if cfg.filter_rule == "threshold":
        return matched >= cfg.filter_threshold, True
    if mismatched.size == 0:
        return True, False
    if cfg.filter_rule == "margin":
        return matched - float(mismatched.mean()) >= cfg.filter_margin, True
    frac = cfg.filter_beat_frac if original is None else min(cfg.filter_beat_frac, original - cfg.filter_rank_slack)
    need = math.ceil(frac * mismatched.size - 1e-9)
    return int((mismatched < matched).sum()) >= need, True


@dataclass
class _Generated:
    """One product's generations before the consistency filter."""

    product: Product
    titles: list[str]
    images: list[tuple[bytes, str]]


class CoAugmenter:
    """Augments products in batches (`augment` = generate + filter); counts generations and drops in `stats`."""

    def __init__(self, cfg: AugmentConfig, scorer: ConsistencyScorer | None = None):
        self.cfg = cfg
        self.titles = [(n, build_augmenter(n, cfg.options.get(n))) for n in cfg.title_augmenters]
        self.images = [(n, build_augmenter(n, cfg.options.get(n))) for n in cfg.image_augmenters]
        self.scorer = scorer
        self.stats = {k: 0 for k in ("products", "titles_generated", "titles_kept", "titles_dropped", "titles_unscored",
                                     "images_generated", "images_kept", "images_dropped", "images_skipped",
                                     "titles_unjudged", "images_unjudged")}

    def __call__(self, p: Product, rng: random.Random) -> Product:
        """One product alone (no in-batch candidates: the relative rules keep its generations)."""
        return self.augment([p], [rng])[0]

    def augment(self, products: Sequence[Product], rngs: Sequence[random.Random]) -> list[Product]:
        """A batch of products: generate for each, then filter all generations against the batch."""
        return self._filter([self._generate(p, rng) for p, rng in zip(products, rngs)])

    def _generate(self, p: Product, rng: random.Random) -> _Generated:
        self.stats["products"] += 1
        titles: list[str] = []
        if self.titles and self.cfg.titles_per_product and (p.title.strip() or p.attributes):
            cands = [rng.choice(self.titles)[1](p, rng) for _ in range(self.cfg.titles_per_product)]
            titles = [c for c in cands if c and c != p.title]
            self.stats["titles_generated"] += len(titles)
        images: list[tuple[bytes, str]] = []
        if self.images and p.images and self.cfg.images_per_product:
            for _ in range(self.cfg.images_per_product):
                k = rng.randrange(len(p.images))
                out = rng.choice(self.images)[1](_decode(p.images[k]), p, rng)
                if out is None:
                    self.stats["images_skipped"] += 1
                    continue
                images.append(_encode(out, p.image_exts[k]))
            self.stats["images_generated"] += len(images)
        return _Generated(p, titles, images)

    def _filter(self, gens: list[_Generated]) -> list[Product]:
        scorer, cfg = self.scorer, self.cfg
        n = len(gens)
        # the batch's originals: main images and titles, each product's mismatched candidates
        has_img = [bool(g.product.images) for g in gens]
        has_txt = [bool(g.product.title.strip()) for g in gens]
        if scorer is not None:
            img_rows = [i for i in range(n) if has_img[i]]
            txt_rows = [i for i in range(n) if has_txt[i]]
            main = scorer.image_embeddings([gens[i].product.images[0] for i in img_rows]) if img_rows else None
            orig = scorer.text_embeddings([gens[i].product.title for i in txt_rows]) if txt_rows else None
        out = []
        for j, g in enumerate(gens):
            p, title = g.product, g.product.title
            # titles: candidates scored against the main image; the best kept one replaces the title
            if g.titles:
                if scorer is None or not has_img[j]:
                    self.stats["titles_unscored"] += len(g.titles)
                    title = g.titles[0]
                else:
                    cand = scorer.text_embeddings(g.titles)  # (C, D)
                    sims = cand @ main.T  # (C, n_img)
                    own = img_rows.index(j)
                    others = np.delete(sims, own, axis=1)
                    ref = None  # how the original title ranks against the same images
                    if has_txt[j]:
                        ref_sims = main @ orig[txt_rows.index(j)]
                        ref = beat_fraction(float(ref_sims[own]), np.delete(ref_sims, own))
                    kept = []
                    for c, text in enumerate(g.titles):
                        keep, judged = keep_generation(float(sims[c, own]), others[c], cfg, ref)
                        self.stats["titles_unjudged"] += int(not judged)
                        self.stats["titles_dropped"] += int(not keep)
                        if keep:
                            kept.append((float(sims[c, own]), text))
                    if kept:
                        title = max(kept)[1]
                self.stats["titles_kept"] += int(title != p.title)
            # images: generated from the originals, scored against the (final) title
            new_images = g.images
            if g.images and title.strip() and scorer is not None:
                emb = scorer.image_embeddings([b for b, _ in g.images])  # (G, D)
                own_txt = orig[txt_rows.index(j)] if (has_txt[j] and title == p.title) else scorer.text_embeddings([title])[0]
                other_txt = np.delete(orig, txt_rows.index(j), axis=0) if has_txt[j] else orig
                others = emb @ other_txt.T if other_txt is not None else np.zeros((len(g.images), 0))
                ref = None  # how the original main image ranks against the same titles
                if has_img[j] and other_txt is not None:
                    main_j = main[img_rows.index(j)]
                    ref = beat_fraction(float(main_j @ own_txt), other_txt @ main_j)
                new_images = []
                for k, gen in enumerate(g.images):
                    keep, judged = keep_generation(float(emb[k] @ own_txt), others[k], cfg, ref)
                    self.stats["images_unjudged"] += int(not judged)
                    self.stats["images_dropped"] += int(not keep)
                    if keep:
                        new_images.append(gen)
            self.stats["images_kept"] += len(new_images)
            out.append(Product(id=p.id, title=title, description=p.description, category=list(p.category),
                               attributes=dict(p.attributes), images=[*p.images, *(b for b, _ in new_images)],
                               image_exts=[*p.image_exts, *(e for _, e in new_images)], labels=dict(p.labels),
                               split=p.split))
        return out


def _is_eval(name: str) -> bool:
    return name.strip().lower() in EVAL_SPLITS


def input_split(shards: str | Path) -> str:
    """The split name of a shard set: its manifest's, else the folder name."""
    from mmrep.data.shards import MANIFEST, read_manifest

    path = Path(shards)
    if (path / MANIFEST).is_file():
        return str(read_manifest(path).get("split") or path.name)
    return path.name


def guard_eval(names: Iterable[str], allow: bool) -> None:
    bad = sorted({n for n in names if n and _is_eval(n)})
    if bad and not allow:
        raise MmrepError(f"refusing to augment evaluation split {bad[0]!r}: evaluation data are never augmented "
                         "(pass --unsafe-allow-eval-split only if you really mean to contaminate it)")


def augment_shards(cfg: AugmentConfig, overwrite: bool = False, scorer: ConsistencyScorer | None = None) -> dict[str, Any]:
    """Run the job: <cfg.shards> -> <cfg.out>/<split>/ (atomic). Returns the manifest (with stats)."""
    from mmrep.data.readers import SkipStats, iter_products
    from mmrep.data.shards import ShardWriter

    if not cfg.shards or not cfg.out:
        raise MmrepError("augment needs an input shard set and an output folder (--shards DIR --out DIR)")
    src_split = input_split(cfg.shards)
    split = cfg.split or src_split
    guard_eval([src_split, split], cfg.unsafe_allow_eval_split)
    dest = Path(cfg.out) / split
    if dest.resolve() == Path(cfg.shards).resolve():
        raise MmrepError(f"augment output {dest} is the input shard set; write a new set elsewhere")
    check_replaceable(dest, overwrite, ("manifest.json", "augment_config.yaml"))
    if scorer is None:
        scorer = build_scorer(cfg.filter, cfg.filter_checkpoint)
    job = CoAugmenter(cfg, scorer)
    skipped = SkipStats()
    rng = random.Random(cfg.seed)
    with atomic_dir(dest, "augment", ("manifest.json", "augment_config.yaml")) as tmp:
        writer = ShardWriter(tmp, prefix=split, max_count=cfg.shard_size, kind="products")
        try:
            batch: list[Product] = []
            rngs: list[random.Random] = []

            def flush() -> None:
                for out in job.augment(batch, rngs):
                    writer.write({"__key__": sample_key(out.id), **out.to_sample()})
                batch.clear()
                rngs.clear()

            for n, p in enumerate(iter_products(cfg.shards, cfg.strict, skipped, verify_images=True)):
                if cfg.max_products and n >= cfg.max_products:
                    break
                guard_eval([p.split], cfg.unsafe_allow_eval_split)
                batch.append(p)
                rngs.append(random.Random(rng.getrandbits(64)))
                if len(batch) >= cfg.filter_batch:
                    flush()
            if batch:
                flush()
        except BaseException:
            writer.abort()
            raise
        skipped.report(f"augment {cfg.shards}")
        stats = dict(job.stats, input_skipped=skipped.samples)
        manifest = writer.close({"augment": stats, "source": str(cfg.shards)})
        config.save_resolved(AugmentRun(cfg), tmp, "augment_config.yaml")
    return manifest


def main(argv: list[str]) -> int:
    """`mmrep augment --shards DIR --out DIR [--config FILE] [--augment.key=value ...]`."""
    cfg_path, overrides, rest = config.split_config_args(argv)
    keys = ", ".join(f.name for f in dataclasses.fields(AugmentConfig))
    parser = argparse.ArgumentParser(
        prog="mmrep augment", description=__doc__.split("\n\n")[0],
        epilog=f"Config: --config FILE (an `augment:` section) and --augment.KEY=VALUE overrides; keys: {keys}. "
               f"Augmenters: {', '.join(sorted(AUGMENTERS))}.")
    parser.add_argument("--shards", help="input product shard set (a split folder)")
    parser.add_argument("--out", help="output root; the new set goes to OUT/<split>/")
    parser.add_argument("--split", help="output split name (default: the input's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output set")
    parser.add_argument("--unsafe-allow-eval-split", action="store_true",
                        help="UNSAFE: augment a val/test/eval split anyway (contaminates evaluation)")
    args = parser.parse_args(rest)
    for key in ("shards", "out", "split"):
        if getattr(args, key):
            overrides.append(f"--augment.{key}={getattr(args, key)}")
    if args.unsafe_allow_eval_split:
        overrides.append("--augment.unsafe_allow_eval_split=true")
    run = config.load(AugmentRun, cfg_path, overrides)
    manifest = augment_shards(run.augment, overwrite=args.overwrite)
    print(json.dumps({"out": str(Path(run.augment.out) / manifest["split"]), "count": manifest["count"],
                      **manifest["augment"]}), file=sys.stdout)
    return 0
