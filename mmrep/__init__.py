"""mmrep: multimodal product representations, pretrain -> post-train -> application."""

__version__ = "0.1.0"
