"""Fixtures shared by these tests (helpers live in export_helpers.py)."""

from embedding_helpers import encoder_dir, products_dir  # noqa: F401
