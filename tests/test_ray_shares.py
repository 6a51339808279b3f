"""The split of the cluster-wide limits between the Ray engine's sender actors (pure, no Ray)."""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.rayengine.shares import split


@pytest.mark.parametrize(
    ("settings", "actors", "concurrency", "rpm"),
    [
        ({"concurrency": 64, "ray_actors": 4}, 4, 16, None),
        ({"concurrency": 100, "ray_actors": 4, "rpm": 600}, 4, 25, 149),
        ({"concurrency": 3, "ray_actors": 4}, 3, 1, None),  # never more actors than slots
        ({"concurrency": 64, "ray_actors": 4, "rpm": 5}, 2, 32, 1),  # every actor gets at least 1 rpm
        ({"concurrency": 64, "ray_actors": 4, "rpm": 3}, 1, 64, 3),  # one actor holds the whole limit
        ({"concurrency": 10, "ray_actors": 3, "rpm": 100}, 3, 3, 32),
    ],
)
def test_shares_add_up_to_at_most_the_limits(settings: dict[str, int], actors: int, concurrency: int,
                                             rpm: int | None) -> None:  # fmt: skip
    cfg = load_config(**settings)
    s = split(cfg)
    assert (s.actors, s.per_actor.concurrency, s.per_actor.rpm) == (actors, concurrency, rpm)
    assert s.actors * s.per_actor.concurrency <= cfg.concurrency
    if cfg.rpm is not None and s.per_actor.rpm is not None:
        # an actor's pacer sends its first request at once, then one per 60/share s: share + 1 a minute
        per_minute = s.per_actor.rpm if s.actors == 1 else s.per_actor.rpm + 1
        assert s.actors * per_minute <= cfg.rpm


def test_actors_by_default_two_on_one_node_four_on_a_cluster() -> None:
    from pipeline.rayengine.shares import CLUSTER_ACTORS, ONE_NODE_ACTORS, default_actors

    assert [default_actors(n) for n in (1, 2, 16)] == [ONE_NODE_ACTORS, CLUSTER_ACTORS, CLUSTER_ACTORS] == [2, 4, 4]
    assert split(load_config(concurrency=64)).actors == 4  # not set and no cluster known: a cluster's


def test_token_and_cost_budgets_are_split_too() -> None:
    s = split(load_config(concurrency=40, ray_actors=4, tpm=100_000, max_total_tokens=1_000, max_cost=2.0))
    assert (s.per_actor.tpm, s.per_actor.max_total_tokens, s.per_actor.max_cost) == (25_000, 250, 0.5)
