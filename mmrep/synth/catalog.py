"""The world's vocabulary and its latent factors: items (category, colour, pattern, brand, ...) and users.

Everything is sampled from independent seeded streams (`stream_rng`), so each part is a pure function
of (seed, what, index) and does not depend on the order in which other parts were generated.
Latent tables are numpy arrays of indices into the vocabularies below (struct of arrays).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (top category, [(subcategory, [noun synonyms, canonical first], shape name, material choices)])
CATALOG: list[tuple[str, list[tuple[str, list[str], str]]]] = [
    ("Apparel", [("T-Shirts", ["t-shirt", "tee", "tshirt", "t shirt"], "tee"),
                 ("Shirts", ["shirt", "button-down shirt", "button up shirt"], "shirt"),
                 ("Hoodies", ["hoodie", "hooded sweatshirt", "hoody"], "hoodie")]),
    ("Bottoms", [("Jeans", ["jeans", "denim pants", "denims"], "trousers"),
                 ("Shorts", ["shorts", "short pants"], "shorts"),
                 ("Skirts", ["skirt", "a-line skirt"], "skirt")]),
    ("Footwear", [("Sneakers", ["sneakers", "trainers", "running shoes"], "sneaker"),
                  ("Boots", ["boots", "ankle boots"], "boot"),
                  ("Sandals", ["sandals", "slides"], "sandal")]),
    ("Bags", [("Backpacks", ["backpack", "rucksack", "bookbag"], "backpack"),
              ("Handbags", ["handbag", "purse"], "handbag"),
              ("Totes", ["tote bag", "tote", "shopper bag"], "tote")]),
    ("Accessories", [("Watches", ["watch", "wristwatch"], "watch"),
                     ("Caps", ["cap", "baseball cap", "hat"], "cap"),
                     ("Sunglasses", ["sunglasses", "shades"], "glasses")]),
    ("Home", [("Bottles", ["water bottle", "bottle", "flask"], "bottle"),
              ("Mugs", ["mug", "coffee cup", "cup"], "mug"),
              ("Vases", ["vase", "flower vase"], "vase")]),
    ("Beauty", [("Perfume", ["perfume", "fragrance", "eau de parfum"], "perfume"),
                ("Lipstick", ["lipstick", "lip colour", "lip color"], "lipstick"),
                ("Creams", ["face cream", "moisturiser", "moisturizer"], "jar")]),
    ("Electronics", [("Phones", ["phone", "smartphone", "mobile phone"], "phone"),
                     ("Headphones", ["headphones", "headset", "earphones"], "headphones"),
                     ("Speakers", ["speaker", "bluetooth speaker", "wireless speaker"], "speaker")]),
]
TOP_MATERIALS = {
    "Apparel": ["cotton", "linen", "polyester", "wool"], "Bottoms": ["denim", "cotton", "linen"],
    "Footwear": ["leather", "canvas", "suede", "mesh"], "Bags": ["leather", "canvas", "nylon"],
    "Accessories": ["metal", "plastic", "leather"], "Home": ["glass", "ceramic", "steel", "plastic"],
    "Beauty": ["glass", "plastic"], "Electronics": ["plastic", "aluminium"],
}
# how a material looks: matte, grain (noise), sheen (highlight band), weave (fine grid)
MATERIAL_LOOK = {"cotton": "matte", "linen": "weave", "polyester": "sheen", "wool": "grain", "denim": "weave",
                 "leather": "sheen", "canvas": "weave", "suede": "grain", "mesh": "weave", "nylon": "sheen",
                 "metal": "sheen", "plastic": "matte", "glass": "sheen", "ceramic": "matte", "steel": "sheen",
                 "aluminium": "grain"}
MATERIALS = sorted(MATERIAL_LOOK)
COLOURS: list[tuple[str, tuple[int, int, int], list[str]]] = [
    ("black", (25, 25, 28), ["black", "jet black"]), ("white", (238, 238, 232), ["white", "off-white"]),
    ("grey", (128, 128, 132), ["grey", "gray"]), ("navy", (25, 35, 95), ["navy", "dark blue"]),
    ("blue", (40, 110, 220), ["blue", "royal blue"]), ("red", (210, 35, 40), ["red", "scarlet"]),
    ("green", (40, 150, 60), ["green", "emerald"]), ("yellow", (240, 205, 40), ["yellow", "mustard"]),
    ("pink", (240, 130, 180), ["pink", "rose"]), ("purple", (120, 50, 160), ["purple", "violet"]),
    ("orange", (245, 130, 30), ["orange", "tangerine"]), ("brown", (120, 75, 40), ["brown", "chocolate"]),
    ("beige", (215, 195, 150), ["beige", "sand"]),
]
PATTERNS: list[tuple[str, list[str]]] = [
    ("plain", ["plain", "solid"]), ("striped", ["striped", "stripe", "stripes"]),
    ("dotted", ["polka dot", "dotted", "spotted"]), ("checked", ["checked", "plaid", "check"]),
    ("zigzag", ["zigzag", "chevron"]),
]
# tops whose products are mostly plain (a patterned phone is rare)
PLAIN_TOPS = {"Accessories", "Home", "Beauty", "Electronics"}
STYLES: list[tuple[str, list[str]]] = [
    ("casual", ["casual", "everyday"]), ("formal", ["formal", "classic"]), ("sport", ["sport", "athletic"]),
    ("vintage", ["vintage", "retro"]), ("minimalist", ["minimalist", "minimal"]),
]
TIERS = ["budget", "mid", "premium", "luxury"]
MARK_SHAPES = ["circle", "square", "triangle", "diamond", "cross", "ring", "bar", "star"]
_SYLLABLES = ["ka", "lo", "vi", "ra", "ne", "to", "mi", "sa", "zu", "be", "do", "fi", "ga", "ho", "ju",
              "ke", "lu", "mo", "no", "pa", "qui", "ri", "su", "ta", "ve", "wo", "xa", "yo", "ze", "ar",
              "el", "on", "is", "um"]

STREAMS = {name: k for k, name in enumerate(  # append only: a stream's index seeds its randomness
    ["brands", "items", "split", "users", "layer", "view", "text", "sessions", "queries", "qphoto", "qtext", "missing", "launch",
     "triplet-noise"])}


def stream_rng(seed: int, stream: str, index: int = 0) -> np.random.Generator:
    """An independent generator for (seed, stream, index): parts of the world never share randomness."""
    return np.random.default_rng([int(seed), STREAMS[stream], int(index)])


def subcategories(n_top: int, n_sub: int) -> list[tuple[str, str, list[str], str]]:
    """The (top, sub, nouns, shape) list used by a world with `n_top` tops x `n_sub` subs."""
    return [(top, sub, nouns, shape) for top, subs in CATALOG[:n_top] for sub, nouns, shape in subs[:n_sub]]


@dataclass
class Brands:
    names: list[str]
    mark: np.ndarray  # (B,) index into MARK_SHAPES
    mark_colour: np.ndarray  # (B,) index into COLOURS
    tier: np.ndarray  # (B,) 0..3
    tops: list[list[int]]  # top categories each brand sells in
    popularity: np.ndarray  # (B,) log-popularity offset


@dataclass
class Items:
    """Latent factors of every item, shape (N,) each."""

    top: np.ndarray
    sub: np.ndarray  # index into the world's subcategory list
    colour: np.ndarray
    pattern_colour: np.ndarray
    pattern: np.ndarray
    brand: np.ndarray
    material: np.ndarray  # index into MATERIALS
    style: np.ndarray
    tier: np.ndarray
    price: np.ndarray  # float
    popularity: np.ndarray  # log-popularity (standardised): drives exposure and clicks, invisible in content
    split: np.ndarray  # 0 train, 1 val, 2 test

    def __len__(self) -> int:
        return len(self.top)


@dataclass
class Users:
    """Latent tastes, one row per user."""

    sub_pref: np.ndarray  # (U, S) probabilities over subcategories
    colour_pref: np.ndarray  # (U, C)
    pattern_pref: np.ndarray  # (U, P)
    style_pref: np.ndarray  # (U, St)
    brand_pref: np.ndarray  # (U, B)
    tier_pref: np.ndarray  # (U,) preferred price tier
    activity: np.ndarray  # (U,) relative number of sessions

    def __len__(self) -> int:
        return len(self.tier_pref)


def make_brands(seed: int, n_brands: int, n_top: int) -> Brands:
    rng = stream_rng(seed, "brands")
    names: list[str] = []
    while len(names) < n_brands:
        k = int(rng.integers(2, 4))
        name = "".join(_SYLLABLES[j] for j in rng.integers(0, len(_SYLLABLES), k)).capitalize()
        if name not in names:
            names.append(name)
    # every top gets at least one brand (b % n_top); a brand also sells in up to two more random tops
    tops = [[b % n_top] for b in range(n_brands)]
    for b in range(n_brands):
        extra = rng.choice(n_top, size=min(int(rng.integers(0, 3)), n_top), replace=False)
        tops[b] = sorted(set(tops[b]) | {int(t) for t in extra})
    # distinct (mark shape, mark colour) per brand while there are enough combinations: the mark is how
    # an image shows the brand
    n_marks = len(MARK_SHAPES) * len(COLOURS)
    combo = np.concatenate([rng.permutation(n_marks) for _ in range(-(-n_brands // n_marks))])[:n_brands]
    return Brands(names=names, mark=combo // len(COLOURS), mark_colour=combo % len(COLOURS),
                  tier=rng.choice(4, size=n_brands, p=[0.3, 0.35, 0.25, 0.1]),
                  tops=tops, popularity=rng.normal(0, 0.7, n_brands))


def make_items(seed: int, n_items: int, n_top: int, n_sub: int, brands: Brands,
               split_fracs: tuple[float, float]) -> Items:
    """Sample item factors; brands and materials depend on the category, tiers on the brand."""
    rng = stream_rng(seed, "items")
    subs = subcategories(n_top, n_sub)
    sub_w = rng.dirichlet(np.full(len(subs), 6.0))  # categories differ in size
    sub = rng.choice(len(subs), size=n_items, p=sub_w)
    top = sub // n_sub
    colour_w = rng.dirichlet(np.full(len(COLOURS), 4.0))
    colour = rng.choice(len(COLOURS), size=n_items, p=colour_w)
    pattern_colour = (colour + rng.integers(1, len(COLOURS), n_items)) % len(COLOURS)
    pat_varied = rng.choice(len(PATTERNS), size=n_items, p=[0.4, 0.18, 0.15, 0.17, 0.1])
    pat_plain = rng.choice(len(PATTERNS), size=n_items, p=[0.8, 0.08, 0.05, 0.04, 0.03])
    plain_top = np.array([CATALOG[t][0] in PLAIN_TOPS for t in range(n_top)])
    pattern = np.where(plain_top[top], pat_plain, pat_varied)
    by_top = [[b for b in range(len(brands.names)) if t in brands.tops[b]] for t in range(n_top)]
    u = rng.random(n_items)
    brand = np.array([by_top[t][int(x * len(by_top[t]))] for t, x in zip(top, u)], dtype=np.int64)
    mats = [[MATERIALS.index(m) for m in TOP_MATERIALS[CATALOG[t][0]]] for t in range(n_top)]
    u = rng.random(n_items)
    material = np.array([mats[t][int(x * len(mats[t]))] for t, x in zip(top, u)], dtype=np.int64)
    style = rng.choice(len(STYLES), size=n_items, p=[0.35, 0.2, 0.2, 0.12, 0.13])
    shift = rng.choice([-1, 0, 1], size=n_items, p=[0.1, 0.8, 0.1])
    tier = np.clip(brands.tier[brand] + shift, 0, 3)
    base = np.exp(rng.normal(3.2, 0.5, len(subs)))[sub]
    price = np.round(base * np.array([1.0, 1.8, 3.5, 8.0])[tier]
                     * np.exp(rng.normal(0, 0.15, n_items)), 2)
    pop = brands.popularity[brand] + rng.normal(0, 1.0, n_items)
    pop = (pop - pop.mean()) / (pop.std() + 1e-9)
    perm = stream_rng(seed, "split").permutation(n_items)
    n_train = int(round(split_fracs[0] * n_items))
    n_val = int(round(split_fracs[1] * n_items))
    split = np.zeros(n_items, dtype=np.int64)
    split[perm[n_train:n_train + n_val]] = 1
    split[perm[n_train + n_val:]] = 2
    return Items(top=top, sub=sub, colour=colour, pattern_colour=pattern_colour, pattern=pattern, brand=brand,
                 material=material, style=style, tier=tier, price=price, popularity=pop, split=split)


def make_users(seed: int, n_users: int, n_top: int, n_sub: int, n_brands: int) -> Users:
    rng = stream_rng(seed, "users")
    top_pref = rng.dirichlet(np.full(n_top, 0.4), size=n_users)
    within = rng.dirichlet(np.full(n_sub, 1.0), size=(n_users, n_top))
    sub_pref = (top_pref[:, :, None] * within).reshape(n_users, n_top * n_sub)
    brand_pref = rng.normal(0, 0.3, (n_users, n_brands))
    fav = rng.integers(0, n_brands, (n_users, 3))
    np.put_along_axis(brand_pref, fav, 1.5, axis=1)
    return Users(sub_pref=sub_pref, colour_pref=rng.normal(0, 1.0, (n_users, len(COLOURS))),
                 pattern_pref=rng.normal(0, 0.8, (n_users, len(PATTERNS))),
                 style_pref=rng.normal(0, 0.6, (n_users, len(STYLES))), brand_pref=brand_pref,
                 tier_pref=rng.choice(4, size=n_users, p=[0.3, 0.4, 0.22, 0.08]),
                 activity=np.exp(rng.normal(0, 0.5, n_users)))


def affinity(users: Users, items: Items, u: np.ndarray, i: np.ndarray) -> np.ndarray:
    """Taste x item-factor affinity for pairs (u[k], i[k]): what a good item representation can capture."""
    n_sub = users.sub_pref.shape[1]
    cat = np.log(np.maximum(users.sub_pref[u, items.sub[i]] * n_sub, 0.05))
    return (users.colour_pref[u, items.colour[i]] + users.pattern_pref[u, items.pattern[i]]
            + users.brand_pref[u, items.brand[i]] + users.style_pref[u, items.style[i]]
            - 0.6 * np.abs(users.tier_pref[u] - items.tier[i]) + 0.3 * cat)
