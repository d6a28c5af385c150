import pytest

from mmrep.synth.world import WorldConfig, generate_world

# a cut-down world for tests that generate several worlds (about 1 s each)
SMALL = dict(n_items=120, n_users=40, n_queries=60, sessions_per_user=10.0, shard_size=50)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The `tiny` preset (default WorldConfig), generated once per test session."""
    out = tmp_path_factory.mktemp("synth") / "tiny"
    summary = generate_world(WorldConfig(), out)
    return out, summary
