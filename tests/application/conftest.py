"""Fixtures for the application tests."""

from __future__ import annotations

import pytest

from click_world import make_world


@pytest.fixture(scope="session")
def world() -> dict:
    return make_world()
