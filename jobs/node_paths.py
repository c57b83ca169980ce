"""Paths that Ray workers read or write, checked on every node of the cluster before the work starts.

A job's driver checks its inputs where it runs; its workers then read and write the same URLs on
their own nodes. An `s3://` URL means the same object everywhere, but a local path only means the
same file on nodes that share a filesystem: on a cluster whose nodes do not, a path that only the
driver's node has makes every worker fail, late (after each DeepSpeed engine is built) or quietly
(every image a reject). So before any work is sent, `check_worker_paths` runs one tiny Ray task on
each other node with resources (`num_cpus=0`, pinned with a node-affinity strategy) that looks for
every local path the workers will read, and for a probe file the driver has just written into every
local path they will write (so a separate folder of the same name on that node does not pass). A
path a node cannot see fails the job within seconds with the flag, the path and the node.

Nothing is checked, and no task is started, when every path is remote or when the driver's node is
the only node (a local Ray): the check costs nothing where it cannot fail.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Sequence
from typing import NamedTuple

from storage.filesystem import is_local, url_to_fs

log = logging.getLogger(__name__)

PROBE_PREFIX = ".maskgit-node-probe-"
CHECK_TIMEOUT_S = 60.0  # a node that has not answered by then (a worker still starting) is not waited for
WHERE_EVERY_NODE_SEES = "put it where every node can read it (s3://..., a shared filesystem)"


class WorkerPath(NamedTuple):
    """One path the job's workers use, named by the flag that gave it."""

    flag: str  # "--input"
    url: str | None  # None or "": not used by this run
    writes: bool = False  # the workers write there (and the driver reads what they wrote)
    given: str | None = None  # the flag's value, where `url` is one of the paths it expanded to


def describe_this_node() -> str:
    """'node <ip> (<short node id>)' of the calling Ray process, for error messages."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    return f"node {ray.util.get_node_ip_address()} ({node_id[:12]})"


def _local_path(url: str) -> str:
    return url_to_fs(url)[1]


def _missing_here(paths: list[str]) -> tuple[str, list[str]]:
    """Runs on a node: (that node, the paths it does not see)."""
    return describe_this_node(), [path for path in paths if not os.path.exists(path)]


def _other_nodes() -> list[dict]:
    """Alive nodes other than the driver's that can run workers (they have CPUs or GPUs)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    return [
        node
        for node in ray.nodes()
        if node["Alive"]
        and node["NodeID"] != here
        and (node["Resources"].get("CPU", 0) > 0 or node["Resources"].get("GPU", 0) > 0)
    ]


def _write_probe(url: str) -> str:
    """A fresh probe file in the folder `url` (made if missing), written from the driver; its local path."""
    folder = _local_path(url).rstrip("/")
    os.makedirs(folder, exist_ok=True)
    probe = f"{folder}/{PROBE_PREFIX}{uuid.uuid4().hex[:12]}"
    with open(probe, "w") as handle:
        handle.write("written by the job's driver; every node must see it\n")
    return probe


def check_worker_paths(paths: Sequence[WorkerPath], *, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Check that every node that may run the job's workers sees the local paths among `paths`.

    Call it with Ray connected, after the driver's own checks of the same paths (it only compares
    the other nodes with the driver's node).

    Raises:
        FileNotFoundError: a node does not see one of the local paths; the message names the flag,
            the path and the node, and says where to put it instead.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    local = [p for p in paths if p.url and is_local(p.url)]
    nodes = _other_nodes() if local else []
    if not nodes:
        return
    probes: list[str] = []
    try:
        expected: dict[str, WorkerPath] = {}  # local path a node must see -> what it stands for
        for path in local:
            if path.writes:
                probe = _write_probe(path.url)
                probes.append(probe)
                expected[probe] = path
            else:
                expected[_local_path(path.url)] = path
        check = ray.remote(num_cpus=0, max_retries=0)(_missing_here)
        refs = [
            check.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(list(expected))
            for node in nodes
        ]
        ready, late = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if late:
            log.warning("%d node(s) did not answer the path check within %.0f s", len(late), timeout_s)
            for ref in late:
                ray.cancel(ref, force=True)
        for ref in ready:
            try:
                node, missing = ray.get(ref)
            except ray.exceptions.RayError as error:  # the node went away meanwhile: nothing to say
                log.warning("path check failed on a node: %s", type(error).__name__)
                continue
            if missing:
                path = expected[missing[0]]
                named = f"{path.flag} {path.given or path.url}"
                if path.writes:
                    raise FileNotFoundError(
                        f"{named}: the workers on {node} would write to a folder of that "
                        "name on their own disk, which the driver's node does not see (the nodes share no "
                        f"filesystem); {WHERE_EVERY_NODE_SEES} and write it"
                    )
                raise FileNotFoundError(
                    f"{named}: only the driver's node has it, {node} of the Ray cluster "
                    f"does not see it (the nodes share no filesystem); {WHERE_EVERY_NODE_SEES}"
                )
    finally:
        for probe in probes:
            with contextlib.suppress(OSError):
                os.remove(probe)


__all__ = ["WorkerPath", "check_worker_paths", "describe_this_node"]
