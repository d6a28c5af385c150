"""Kept only for `mmrep/export/model_cli.py` until it imports `mmrep.model.from_checkpoint` (issue 12 merge)."""

from mmrep.model.from_checkpoint import encoder_from_checkpoint

__all__ = ["encoder_from_checkpoint"]
