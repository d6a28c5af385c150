"""Fixtures shared by these tests (helpers live in export_helpers.py)."""

from export_helpers import encoder_dir, products_dir  # noqa: F401
