"""Procedural product images: category silhouettes filled with colour + pattern + material look, a brand
mark, placed on cluttered backgrounds with view changes (shift, scale, rotation, occlusion).

A product is drawn once as an RGBA layer (`product_layer`, 2x supersampled); each view (`render_view`)
transforms that layer onto a fresh background. Query photos (`kind="photo"`) add user-photo defects:
stronger rotation, lighting and colour cast, blur, sensor noise, lower JPEG quality.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mmrep.synth.catalog import COLOURS, MARK_SHAPES, MATERIAL_LOOK, MATERIALS, PATTERNS, STYLES

# Silhouettes in unit coordinates (x right, y down). Parts: ("poly", pts) | ("ellipse", box) |
# ("rect", box) | ("rrect", box) | ("arc", box, start, end, width) | ("line", pts, width).
# "body" parts form the filled product; "detail" parts are drawn on top in a contrasting shade.
SHAPES: dict[str, dict] = {
    "tee": {"body": [("poly", [(.3, .15), (.42, .12), (.5, .18), (.58, .12), (.7, .15), (.9, .3), (.8, .42),
                               (.72, .36), (.72, .88), (.28, .88), (.28, .36), (.2, .42), (.1, .3)])],
            "detail": [("arc", (.42, .06, .58, .24), 0, 180, .02)], "mark": (.6, .32)},
    "shirt": {"body": [("poly", [(.32, .14), (.44, .12), (.5, .2), (.56, .12), (.68, .14), (.86, .28), (.92, .8),
                                 (.82, .82), (.72, .4), (.72, .9), (.28, .9), (.28, .4), (.18, .82), (.08, .8),
                                 (.14, .28)])],
              "detail": [("line", [(.5, .2), (.5, .9)], .025), ("poly", [(.44, .12), (.5, .22), (.4, .22)]),
                         ("poly", [(.56, .12), (.5, .22), (.6, .22)])], "mark": (.62, .34)},
    "hoodie": {"body": [("poly", [(.3, .2), (.7, .2), (.88, .32), (.92, .82), (.82, .84), (.74, .44), (.74, .9),
                                  (.26, .9), (.26, .44), (.18, .84), (.08, .82), (.12, .32)]),
                        ("ellipse", (.34, .02, .66, .3))],
               "detail": [("rect", (.36, .62, .64, .78)), ("ellipse", (.42, .1, .58, .26))], "mark": (.5, .45)},
    "trousers": {"body": [("poly", [(.25, .08), (.75, .08), (.8, .92), (.58, .92), (.5, .35), (.42, .92),
                                    (.2, .92)])],
                 "detail": [("line", [(.25, .14), (.75, .14)], .03)], "mark": (.35, .25)},
    "shorts": {"body": [("poly", [(.18, .25), (.82, .25), (.88, .72), (.56, .74), (.5, .5), (.44, .74),
                                  (.12, .72)])],
               "detail": [("line", [(.18, .31), (.82, .31)], .03)], "mark": (.32, .45)},
    "skirt": {"body": [("poly", [(.32, .18), (.68, .18), (.9, .82), (.1, .82)])],
              "detail": [("line", [(.32, .24), (.68, .24)], .035)], "mark": (.5, .45)},
    "sneaker": {"body": [("poly", [(.08, .52), (.32, .46), (.46, .32), (.6, .36), (.9, .58), (.93, .72),
                                   (.08, .72)])],
                "detail": [("rect", (.06, .7, .95, .8)), ("line", [(.4, .42), (.52, .52)], .02)],
                "mark": (.62, .56)},
    "boot": {"body": [("poly", [(.3, .08), (.56, .08), (.57, .52), (.88, .64), (.9, .84), (.28, .84)])],
             "detail": [("rect", (.26, .82, .92, .9))], "mark": (.43, .4)},
    "sandal": {"body": [("ellipse", (.08, .56, .92, .78)), ("rect", (.3, .38, .42, .64)),
                        ("rect", (.58, .38, .7, .64))],
               "detail": [("line", [(.26, .44), (.74, .44)], .05)], "mark": (.5, .67)},
    "backpack": {"body": [("rrect", (.2, .16, .8, .9)), ("arc", (.36, .04, .64, .3), 180, 360, .05)],
                 "detail": [("rrect", (.3, .56, .7, .82))], "mark": (.5, .38)},
    "handbag": {"body": [("poly", [(.14, .42), (.86, .42), (.92, .86), (.08, .86)]),
                         ("arc", (.28, .12, .72, .66), 180, 360, .06)],
                "detail": [("line", [(.14, .54), (.86, .54)], .02)], "mark": (.5, .68)},
    "tote": {"body": [("rect", (.18, .36, .82, .9)), ("line", [(.3, .36), (.36, .1), (.44, .36)], .04),
                      ("line", [(.56, .36), (.64, .1), (.7, .36)], .04)],
             "detail": [], "mark": (.5, .62)},
    "watch": {"body": [("rect", (.41, .04, .59, .96)), ("ellipse", (.26, .28, .74, .72))],
              "detail": [("ellipse", (.33, .35, .67, .65))], "mark": (.5, .5)},
    "cap": {"body": [("ellipse", (.18, .24, .78, .84)), ("poly", [(.48, .56), (.96, .58), (.94, .68), (.48, .66)])],
            "detail": [("line", [(.2, .56), (.78, .56)], .03)], "mark": (.46, .4)},
    "glasses": {"body": [("ellipse", (.06, .34, .46, .66)), ("ellipse", (.54, .34, .94, .66)),
                         ("line", [(.42, .44), (.58, .44)], .05)],
                "detail": [("ellipse", (.12, .4, .4, .6)), ("ellipse", (.6, .4, .88, .6))], "mark": (.26, .5)},
    "bottle": {"body": [("rect", (.4, .06, .6, .3)), ("rrect", (.28, .24, .72, .94))],
               "detail": [("rect", (.38, .04, .62, .12))], "mark": (.5, .58)},
    "mug": {"body": [("rect", (.16, .24, .68, .86)), ("arc", (.54, .34, .9, .72), 270, 90, .07)],
            "detail": [("line", [(.16, .3), (.68, .3)], .02)], "mark": (.42, .55)},
    "vase": {"body": [("poly", [(.4, .08), (.6, .08), (.58, .24), (.8, .5), (.7, .92), (.3, .92), (.2, .5),
                                (.42, .24)])],
             "detail": [("line", [(.38, .1), (.62, .1)], .03)], "mark": (.5, .58)},
    "perfume": {"body": [("rrect", (.22, .38, .78, .92)), ("rect", (.42, .18, .58, .4))],
                "detail": [("rect", (.38, .1, .62, .2))], "mark": (.5, .65)},
    "lipstick": {"body": [("rect", (.36, .46, .64, .94)), ("poly", [(.4, .46), (.4, .22), (.6, .12), (.6, .46)])],
                 "detail": [("rect", (.34, .46, .66, .54))], "mark": (.5, .74)},
    "jar": {"body": [("rrect", (.16, .44, .84, .86))],
            "detail": [("rect", (.14, .32, .86, .46))], "mark": (.5, .65)},
    "phone": {"body": [("rrect", (.28, .06, .72, .94))],
              "detail": [("rect", (.33, .13, .67, .82))], "mark": (.5, .88)},
    "headphones": {"body": [("arc", (.18, .1, .82, .8), 180, 360, .06), ("rrect", (.1, .42, .32, .8)),
                            ("rrect", (.68, .42, .9, .8))],
                   "detail": [("rect", (.14, .5, .28, .72)), ("rect", (.72, .5, .86, .72))], "mark": (.5, .24)},
    "speaker": {"body": [("rrect", (.22, .14, .78, .88))],
                "detail": [("ellipse", (.34, .44, .66, .76)), ("ellipse", (.42, .22, .58, .38))],
                "mark": (.5, .82)},
}


@dataclass(frozen=True)
class ItemLook:
    """What the renderer needs about one item (indices into the catalog vocabularies)."""

    shape: str
    colour: int
    pattern_colour: int
    pattern: int
    material: int
    style: int
    mark: int
    mark_colour: int


def _draw_part(draw: ImageDraw.ImageDraw, part: tuple, s: int, fill: int | tuple) -> None:
    kind = part[0]
    if kind == "poly":
        draw.polygon([(x * s, y * s) for x, y in part[1]], fill=fill)
    elif kind in ("ellipse", "rect", "rrect"):
        box = [v * s for v in part[1]]
        if kind == "ellipse":
            draw.ellipse(box, fill=fill)
        elif kind == "rect":
            draw.rectangle(box, fill=fill)
        else:
            draw.rounded_rectangle(box, radius=s * 0.08, fill=fill)
    elif kind == "arc":
        draw.arc([v * s for v in part[1]], part[2], part[3], fill=fill, width=max(1, int(part[4] * s)))
    elif kind == "line":
        draw.line([(x * s, y * s) for x, y in part[1]], fill=fill, width=max(1, int(part[2] * s)))


@functools.lru_cache(maxsize=8)
def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    """(s, s) float32 row and column coordinates (cached: every product layer needs them)."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _pattern(kind: str, s: int, rng: np.random.Generator) -> np.ndarray:
    """(s, s) float mask in [0, 1]: where the pattern's second colour shows."""
    yy, xx = _grid(s)
    period = s / rng.uniform(5, 9)
    if kind == "plain":
        return np.zeros((s, s), np.float32)
    if kind == "striped":
        angle = rng.choice([0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4])
        t = xx * np.cos(angle) + yy * np.sin(angle)
        return ((t / period) % 1.0 < 0.4).astype(np.float32)
    if kind == "dotted":
        fx, fy = (xx / period) % 1.0 - 0.5, (yy / period) % 1.0 - 0.5
        return (fx * fx + fy * fy < 0.09).astype(np.float32)
    if kind == "checked":
        return (((xx // period) + (yy // period)) % 2).astype(np.float32)
    if kind == "zigzag":
        t = yy + period * 0.5 * np.abs((xx / period) % 2.0 - 1.0) * 2
        return ((t / period) % 1.0 < 0.4).astype(np.float32)
    raise ValueError(f"unknown pattern {kind}")


def _mark(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "cross":
        w = r * 0.4
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(1, int(r * 0.45)))
    elif shape == "bar":
        draw.rectangle([cx - r, cy - r * 0.35, cx + r, cy + r * 0.35], fill=fill)
    elif shape == "star":
        pts = [(cx + (r if k % 2 == 0 else r * 0.45) * np.sin(k * np.pi / 5),
                cy - (r if k % 2 == 0 else r * 0.45) * np.cos(k * np.pi / 5)) for k in range(10)]
        draw.polygon(pts, fill=fill)


def _contrast(rgb: np.ndarray) -> tuple[int, int, int]:
    """A darker (or, for dark colours, lighter) shade for details and outlines."""
    lum = float(rgb @ np.array([0.299, 0.587, 0.114]))
    out = rgb * 0.45 if lum > 90 else rgb * 0.5 + 110
    return tuple(int(v) for v in np.clip(out, 0, 255))


def product_layer(look: ItemLook, size: int, rng: np.random.Generator) -> Image.Image:
    """The product alone as an RGBA image of side 2*size (alpha = silhouette)."""
    s = 2 * size
    spec = SHAPES[look.shape]
    mask_img = Image.new("L", (s, s), 0)
    md = ImageDraw.Draw(mask_img)
    for part in spec["body"]:
        _draw_part(md, part, s, 255)
    primary = np.array(COLOURS[look.colour][1], np.float32)
    second = np.array(COLOURS[look.pattern_colour][1], np.float32)
    pm = _pattern(PATTERNS[look.pattern][0], s, rng)[..., None]
    rgb = primary * (1 - pm) + second * pm
    material_look = MATERIAL_LOOK[MATERIALS[look.material]]
    if material_look == "grain":
        rgb += 14 * rng.standard_normal((s, s, 1), dtype=np.float32)
    elif material_look == "weave":
        yy, xx = _grid(s)
        rgb += (((xx // 2 + yy // 2) % 2) * 18 - 9)[..., None]
    elif material_look == "sheen":
        xx = np.arange(s, dtype=np.float32)[None, :] / s
        rgb *= (0.8 + 0.45 * np.exp(-((xx - rng.uniform(0.25, 0.45)) ** 2) / 0.01))[..., None]
    style = STYLES[look.style][0]
    if style == "vintage":  # faded, warm
        rgb = 0.65 * rgb + 0.35 * np.array([170, 140, 100], np.float32)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    detail = _contrast(primary)
    for part in spec["detail"]:
        _draw_part(draw, part, s, detail)
    if style == "sport":  # a diagonal accent band
        draw.line([(0.15 * s, 0.85 * s), (0.85 * s, 0.15 * s)], fill=tuple(int(v) for v in second), width=int(s * .05))
    mx, my = spec["mark"]
    _mark(draw, MARK_SHAPES[look.mark], mx * s, my * s, 0.085 * s, COLOURS[look.mark_colour][1])
    if look.mark_colour == look.colour:  # keep the mark visible on a same-colour product
        _mark(draw, MARK_SHAPES[look.mark], mx * s, my * s, 0.05 * s, _contrast(primary))
    if style == "formal":  # crisp dark outline
        edge = mask_img.filter(ImageFilter.FIND_EDGES)
        img.paste(detail, (0, 0), edge)
    img.putalpha(mask_img)
    return img


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Gradient + noise + random clutter shapes: the product has to be found, not just read off."""
    # muted colours (half-way to a random grey), like studio and home backdrops
    c1, c2 = (np.float32(0.5) * rng.integers(0, 256, 3).astype(np.float32) + np.float32(0.5 * rng.integers(40, 230))
              for _ in range(2))
    t = np.linspace(0, 1, size, dtype=np.float32)
    ramp = (t[None, :] if rng.random() < 0.5 else t[:, None])[..., None]
    arr = c1 + (c2 - c1) * ramp + 8 * rng.standard_normal((size, size, 1), dtype=np.float32)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * size
        w, h = rng.uniform(0.1, 0.5, 2) * size
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=fill)
        elif kind == 1:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=fill)
        else:
            draw.line([(x0, y0), (x0 + w, y0 + h)], fill=fill, width=int(rng.integers(1, 4)))
    return img


def render_view(layer: Image.Image, size: int, rng: np.random.Generator, kind: str = "catalog",
                occlusion_rate: float = 0.2) -> Image.Image:
    """One view of a product layer on a fresh background; `kind` is "catalog" or "photo" (query)."""
    photo = kind == "photo"
    scale = rng.uniform(0.45, 0.95) if photo else rng.uniform(0.55, 0.9)
    angle = rng.uniform(-30, 30) if photo else rng.uniform(-12, 12)
    w = max(4, int(size * scale))
    # shrink first, rotate the small image: the same view at a fraction of the cost
    obj = layer.resize((w, w), Image.BILINEAR).rotate(angle, resample=Image.BILINEAR, expand=True)
    w = obj.size[0]
    img = _background(rng, size)
    slack = w // 8  # allow the product to be cut at the border a little
    x = int(rng.integers(-slack, size - w + slack + 1))
    y = int(rng.integers(-slack, size - w + slack + 1))
    img.paste(obj, (x, y), obj)
    if rng.random() < occlusion_rate:  # something in front of the product
        draw = ImageDraw.Draw(img)
        ow, oh = rng.uniform(0.15, 0.35, 2) * w
        ox = x + rng.uniform(-0.1, 0.9) * w
        oy = y + rng.uniform(-0.1, 0.9) * w
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([ox, oy, ox + ow, oy + oh], fill=fill)
        else:
            draw.rectangle([ox, oy, ox + ow, oy + oh], fill=fill)
    if photo:  # lighting, colour cast, blur, sensor noise
        arr = np.asarray(img, np.float32)
        arr = (arr - 128) * rng.uniform(0.75, 1.2) + 128 + rng.uniform(-25, 25)
        arr = (arr * rng.uniform(0.88, 1.12, 3).astype(np.float32)
               + np.float32(rng.uniform(3, 10)) * rng.standard_normal(arr.shape, dtype=np.float32))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
        if rng.random() < 0.5:
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    return img


def encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    """JPEG ("jpg") or PNG bytes (deterministic for a given image)."""
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
