"""Titles, descriptions, attributes and query texts from templates, with the noise real catalogues have:
synonyms ("tee" / "t-shirt"), typos, word-order changes and missing fields (absent, never faked).
"""

from __future__ import annotations

import numpy as np

from mmrep.synth.catalog import COLOURS, MATERIALS, PATTERNS, STYLES, TIERS

_KEYBOARD = "qwertyuiopasdfghjklzxcvbnm"
ATTRIBUTE_KEYS = ("brand", "colour", "pattern", "material", "style", "price")
_FILLERS = ["Great for everyday use.", "A customer favourite.", "Easy to care for.", "Limited edition.",
            "Ships in 2 days.", "Perfect as a gift.", "Designed to last.", ""]


def pick(rng: np.random.Generator, words: list[str], synonym_rate: float) -> str:
    """The canonical word, or (with probability `synonym_rate`) one of its synonyms."""
    if len(words) > 1 and rng.random() < synonym_rate:
        return words[int(rng.integers(1, len(words)))]
    return words[0]


def typo(rng: np.random.Generator, word: str) -> str:
    """One keyboard-style error: swap, drop, double or replace a letter."""
    if len(word) < 4:
        return word
    k = int(rng.integers(1, len(word) - 1))
    op = int(rng.integers(0, 4))
    if op == 0:
        return word[:k] + word[k + 1] + word[k] + word[k + 2:]
    if op == 1:
        return word[:k] + word[k + 1:]
    if op == 2:
        return word[:k] + word[k] + word[k:]
    return word[:k] + _KEYBOARD[int(rng.integers(0, len(_KEYBOARD)))] + word[k + 1:]


def add_typos(rng: np.random.Generator, text: str, rate: float) -> str:
    return " ".join(typo(rng, w) if rng.random() < rate else w for w in text.split(" "))


def product_text(rng: np.random.Generator, f: dict, nouns: list[str], cfg) -> dict:
    """Title, description and attributes for one item; `f` holds its factor values by name.

    Returns {"title", "description", "attributes"}; any of them may be empty (missing).
    """
    colour = pick(rng, COLOURS[f["colour"]][2], cfg.synonym_rate)
    pattern = pick(rng, PATTERNS[f["pattern"]][1], cfg.synonym_rate)
    material = MATERIALS[f["material"]]
    style = pick(rng, STYLES[f["style"]][1], cfg.synonym_rate)
    noun = pick(rng, nouns, cfg.synonym_rate)
    brand = f["brand_name"]
    # optional adjectives, each dropped from the title at title_drop_rate
    adjs = [a for a, keep in ((style, 0.5), (colour, 1.0), (pattern if f["pattern"] else "", 1.0), (material, 0.7))
            if a and rng.random() < keep * (1 - cfg.title_drop_rate)]
    if rng.random() < cfg.word_order_rate:
        rng.shuffle(adjs)
    adj = " ".join(adjs)
    has_brand = rng.random() >= cfg.title_drop_rate
    template = int(rng.integers(0, 4)) if rng.random() < cfg.word_order_rate else 0
    if not has_brand:
        title = f"{adj} {noun}"
    elif template == 0:
        title = f"{brand} {adj} {noun}"
    elif template == 1:
        title = f"{adj} {noun} by {brand}"
    elif template == 2:
        title = f"{noun} - {brand}, {adj}"
    else:
        title = f"{brand.upper()} | {noun} {adj}"
    title = " ".join(title.replace(" ,", ",").split()).strip(" ,-|")
    title = add_typos(rng, title, cfg.typo_rate)
    if rng.random() < cfg.missing_title_rate and f["has_image"]:
        title = ""
    desc = ""
    if rng.random() >= cfg.missing_description_rate:
        filler = _FILLERS[int(rng.integers(0, len(_FILLERS)))]
        desc = f"{style.capitalize()} {nouns[0]} in {colour} {material}. {TIERS[f['tier']].capitalize()} range. {filler}"
        desc = add_typos(rng, desc.strip(), cfg.typo_rate / 2)
    values = {"brand": brand, "colour": COLOURS[f["colour"]][0], "pattern": PATTERNS[f["pattern"]][0],
              "material": material, "style": STYLES[f["style"]][0], "price": f"{f['price']:.2f}"}
    # a missing attribute is absent from the dict (not "", not "unknown")
    attributes = {k: v for k, v in values.items() if rng.random() >= cfg.missing_attribute_rate}
    return {"title": title, "description": desc, "attributes": attributes}


def query_text(rng: np.random.Generator, f: dict, nouns: list[str], cfg, short: bool = False) -> str:
    """What a shopper types for the item described by `f`: its noun + a few of its attributes."""
    noun = pick(rng, nouns, 0.6)
    parts = []
    for word, p in ((pick(rng, COLOURS[f["colour"]][2], 0.5), 0.7),
                    (pick(rng, PATTERNS[f["pattern"]][1], 0.5) if f["pattern"] else "", 0.5),
                    (f["brand_name"].lower(), 0.35), (MATERIALS[f["material"]], 0.25),
                    (pick(rng, STYLES[f["style"]][1], 0.5), 0.2)):
        if word and rng.random() < (p * 0.5 if short else p):
            parts.append(word)
    if rng.random() < 0.3:
        rng.shuffle(parts)
    words = parts + [noun]
    if rng.random() < 0.15:
        words = [noun] + parts
    if rng.random() < 0.1:
        words.append(f"under {int(f['price'] * 1.3) + 1}")
    return add_typos(rng, " ".join(words).lower(), cfg.typo_rate * 1.5)
