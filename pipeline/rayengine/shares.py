"""How the cluster-wide limits are split between the sender actors (pure, no Ray).

``--concurrency``, ``--rpm``, ``--tpm`` and the budgets are limits at the gateway. The
Ray engine gives each of its ``A`` sender actors a fixed share, enforced by that
actor's own :class:`~pipeline.limits.Pacer` and :class:`~pipeline.budget.BudgetGuard`,
so the shares add up to at most the limit and no request waits for a remote call.
Why a static split rather than a limiter actor every request asks: at C=100 and
200 ms that actor would take ~1000 calls a second (a slot and its release), a
round trip each, and on a small machine that costs more throughput than a share left
idle at the tail of a run; a fixed pool of actors (Ray restarts a killed one) keeps
the shares valid for the whole run.

- concurrency: ``C // A`` each (``A`` is at most ``C``), so at most C in flight;
- rpm: ``R // A - 1`` each. An actor's pacer lets its first request through at once
  and then spaces them ``60 / share`` seconds apart, so one actor sends at most
  ``share + 1`` in any minute and all of them at most ``A * (R // A) <= R``;
- tpm, max_total_tokens, max_cost: ``// A`` (or ``/ A``) each;
- head_concurrency (document HEADs, a limit at the document hosts): ``// A`` each, at least 1.

``A`` is lowered when a limit is too small to give every actor a share of at least 1.

How many actors when ``ray_actors`` is not set (:func:`default_actors`): two on a Ray of
one node, such as the local one ``docpipe run`` starts, and :data:`CLUSTER_ACTORS` on a
cluster of several nodes. Each actor is docpipe's asyncio sender in one process; every
further actor is one more process to start (~3 s of CPU each, importing Ray Data and
docpipe). On this project's 2-core machine (C=100, 200 ms, ``docpipe bench --scenario
ray``, quiet): one actor 379 requests/s (79.5 % of the asyncio engine), two 417 (88 %),
both first requesting ~15 s from spawn; four kept ~340 on the loaded machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import JobConfig

#: Sender actors on a Ray cluster of more than one node when ``ray_actors`` is not set.
CLUSTER_ACTORS = 4
#: ... and on a Ray of one node (the local one): two senders hide each other's batch tails.
ONE_NODE_ACTORS = 2


def default_actors(nodes: int) -> int:
    """Sender actors for a Ray of ``nodes`` alive nodes when ``ray_actors`` is not set."""
    return ONE_NODE_ACTORS if nodes <= 1 else CLUSTER_ACTORS


@dataclass(frozen=True, slots=True)
class Split:
    """The actor count and the settings each actor runs with."""

    actors: int
    per_actor: JobConfig


def actor_count(cfg: JobConfig) -> int:
    """How many sender actors: ``ray_actors`` (not set: :data:`CLUSTER_ACTORS`; the driver
    sets it from the cluster first), lowered until every share is at least 1."""
    actors = min(CLUSTER_ACTORS if cfg.ray_actors is None else cfg.ray_actors, cfg.concurrency)
    if cfg.rpm is not None:
        actors = min(actors, max(1, cfg.rpm // 2))
    if cfg.tpm is not None:
        actors = min(actors, cfg.tpm)
    if cfg.max_total_tokens is not None:
        actors = min(actors, cfg.max_total_tokens)
    return max(1, actors)


def split(cfg: JobConfig) -> Split:
    """Each actor's share of ``cfg``'s limits; see the module docstring."""
    a = actor_count(cfg)
    changes: dict[str, object] = {"concurrency": cfg.concurrency // a}
    if cfg.rpm is not None:
        # one actor: its own pacer holds the whole limit, as the asyncio engine's does
        changes["rpm"] = cfg.rpm if a == 1 else max(1, cfg.rpm // a - 1)
    if cfg.tpm is not None:
        changes["tpm"] = cfg.tpm // a
    if cfg.max_total_tokens is not None:
        changes["max_total_tokens"] = cfg.max_total_tokens // a
    if cfg.max_cost is not None:
        changes["max_cost"] = cfg.max_cost / a
    changes["head_concurrency"] = max(1, cfg.head_concurrency // a)
    return Split(a, cfg.replace(**changes))
