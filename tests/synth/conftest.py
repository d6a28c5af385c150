import pytest

from mmrep.synth.world import WorldConfig, generate_world


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The `tiny` preset (default WorldConfig), generated once per test session."""
    out = tmp_path_factory.mktemp("synth") / "tiny"
    summary = generate_world(WorldConfig(), out)
    return out, summary
