"""Makes tests/ importable (shared helpers such as embedding_helpers.py live here)."""
