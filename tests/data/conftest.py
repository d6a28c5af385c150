"""Fixtures for the data-layer tests."""

import pytest

from mmrep.data.tokenize import ProductTokenizer, TokenizerConfig


@pytest.fixture(scope="session")
def tokenizer() -> ProductTokenizer:
    return ProductTokenizer(TokenizerConfig(context_length=32))
