"""Encoder backbones, one module each; every module registers its encoder with
`@mmrep.model.registry.register_backbone` and is found by the registry (no list to edit elsewhere)."""
