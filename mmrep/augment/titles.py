"""Built-in title augmenters: they keep the product's entities (colour, category, attributes)."""

from __future__ import annotations

import random
from pathlib import Path

from mmrep.augment.images import decode_image
from mmrep.augment.registry import register_augmenter
from mmrep.errors import MmrepError
from mmrep.records import Product


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
        images = [decode_image(product.images[0])] if product.images else None
        if images:
            content.insert(0, {"type": "image"})
        chat = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        inputs = self.processor(text=chat, images=images, return_tensors="pt")
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = self.processor.batchdecode_image(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        return ensure_entities(new.strip().splitlines()[0] if new.strip() else product.title, product)
