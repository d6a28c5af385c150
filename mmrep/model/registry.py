"""The backbone registry: `model.backbone` name -> its encoder class and the facts the rest of mmrep needs.

A backbone is one module in `mmrep/model/backbones/` whose encoder class carries `@register_backbone(...)`
(timm's `@register_model` idea). The registry imports every module of that package the first time a
name is looked up, so adding a backbone touches exactly one file, and nothing here imports a backbone
statically (the backbones import `Encoder` and this module; neither imports them back).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

from mmrep.errors import MmrepError

BACKBONES_PACKAGE = "mmrep.model.backbones"
# Typed loosely on purpose: this module imports nothing of mmrep.model, so config, encoder and the
# backbones can all import it without a cycle.
ModelConfig = Any
Encoder = Any


@dataclass(frozen=True)
class Backbone:
    """What config validation, the trainer and save/load need to know about one backbone."""

    name: str
    build: Callable[..., Encoder]  # (cfg, load_pretrained=True) -> Encoder
    check: Callable[[ModelConfig], None]  # raises MmrepError naming the offending model.* key
    # Config sections naming files an encoder folder must carry (tokenizer aside): see mmrep.model.assets.
    assets: Callable[[dict], tuple[str, ...]]
    # `Encoder.uniform_calls` makes every rank run every tower (needed by ZeRO-3 on several ranks)
    uniform_calls: bool = False


_REGISTRY: dict[str, Backbone] = {}
_discovered = False


def register_backbone(name: str, check: Callable[[ModelConfig], None],
                      assets: Callable[[dict], tuple[str, ...]] = lambda model: (), uniform_calls: bool = False):
    """Class decorator: register an `Encoder` subclass as `model.backbone: <name>`."""

    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name].build is not cls:
            raise ValueError(f"backbone {name!r} is registered twice ({_REGISTRY[name].build.__module__}, {cls.__module__})")
        _REGISTRY[name] = Backbone(name, cls, check, assets, uniform_calls)
        return cls

    return wrap


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    package = importlib.import_module(BACKBONES_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{BACKBONES_PACKAGE}.{module.name}")
    _discovered = True


def backbone_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_backbone(name: str) -> Backbone:
    _discover()
    if name not in _REGISTRY:
        raise MmrepError(f"model.backbone {name!r} is not a known backbone; choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_encoder(cfg: ModelConfig, load_pretrained: bool = True) -> Encoder:
    """The encoder for `cfg.backbone`; `load_pretrained=False` skips tower weights (load_encoder fills them)."""
    return get_backbone(cfg.backbone).build(cfg, load_pretrained=load_pretrained)
