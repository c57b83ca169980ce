"""Whether a job's CPU tasks can still run beside its long-lived actors, from the cluster's live state.

A Ray actor holds its CPU reservation for as long as it lives, and a restarted actor takes whatever
its new node has left. After a node is lost, the actors can end up holding every CPU of the nodes
that remain, and a task that needs one whole CPU (the tokenize job's decode task) then waits for a
node forever, without an error: Ray only reports it as pending. `room_beside` works out, from the
GCS's node and actor tables, the most CPUs any live node has beside the given actors, so the caller
can drop an actor or fail with a message that names the missing resource.

The actor table is read through `ray._private.state` (the GCS), not `ray.util.state`: the state API
goes through the dashboard, which a locally started Ray of these commands does not run.
"""

from __future__ import annotations

from typing import NamedTuple


class ActorPlace(NamedTuple):
    """Where one actor is: its state ("ALIVE", "RESTARTING", "PENDING_CREATION", "DEAD", ...) and node."""

    state: str
    node_id: str | None


class Room(NamedTuple):
    """CPUs of the live nodes and what the actors hold of them."""

    cpus: float  # CPUs of all live nodes
    held: float  # CPUs the given ALIVE actors hold
    most_free: float  # the most CPUs one live node has beside the actors
    crowded_node: str | None  # the live node with the least room that hosts an actor


def actor_places(actors: list) -> list[ActorPlace]:
    """The state and node of each actor handle (GCS actor table)."""
    from ray._private.state import actors as actor_table

    places = []
    for actor in actors:
        info = actor_table(actor_id=actor._actor_id.hex()) or {}
        node = (info.get("Address") or {}).get("NodeID") or None
        places.append(ActorPlace(str(info.get("State", "DEAD")), node))
    return places


def room_beside(places: list[ActorPlace], cpus_per_actor: float) -> Room:
    """How many CPUs the live nodes have beside the ALIVE actors among `places`."""
    import ray

    total = {n["NodeID"]: float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]}
    free = dict(total)
    held = 0.0
    for place in places:
        if place.state == "ALIVE" and place.node_id in free:
            free[place.node_id] -= cpus_per_actor
            held += cpus_per_actor
    hosts = {p.node_id for p in places if p.state == "ALIVE" and p.node_id in free}
    crowded = min(hosts, key=free.__getitem__, default=None)
    return Room(sum(total.values()), held, max(free.values(), default=0.0), crowded)


__all__ = ["ActorPlace", "Room", "actor_places", "room_beside"]
