"""One policy for joining or starting Ray, shared by every command that uses it.

    address (--ray-address / --address), else $RAY_ADDRESS     -> join that cluster
        ("auto": the cluster running on this node, as `ray start --head` left it;
         "local": same as no address)
    no address                                                   -> start a private local Ray on
                                                                    127.0.0.1 with `num_cpus` CPUs
    Ray already initialised in this process (a test, the quickstart) -> use it as it is

Only a Ray this process started or joined is shut down at the end. A cluster already running on the
machine is joined only when asked (`--ray-address auto`), never guessed: on a shared machine a
guess would run the job on someone else's cluster. `ray job submit` sets $RAY_ADDRESS, so submitted
commands join their cluster without a flag.

Every command gets the same settings: Ray's own log lines at WARNING (the commands print their
progress themselves), worker output forwarded to the driver, and a local cluster bound to 127.0.0.1
(`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, so nothing listens on a public interface).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

log = logging.getLogger(__name__)

LOCAL_NODE_IP = "127.0.0.1"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a local Ray binds its servers to 127.0.0.1 only


def resolve_ray_address(address: str | None = None) -> str | None:
    """The cluster to join: `address`, else $RAY_ADDRESS; None means "start a local Ray"."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address


def connect_ray(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = False) -> bool:
    """Join or start Ray by the module's policy; True when this call did (and so owns the shutdown).

    Args:
        address: cluster to join (None: $RAY_ADDRESS, else start a local Ray).
        num_cpus: CPUs of a locally started Ray (None: all cores); ignored when joining a cluster.
        dashboard: start the dashboard with a local Ray (Ray Train's state API polls it).

    Returns:
        False when Ray was already initialised in this process (it is left as it is).
    """
    import ray

    if ray.is_initialized():
        return False
    address = resolve_ray_address(address)
    common = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, **common)
    else:
        os.environ.setdefault(LOOPBACK_ENV, "0")  # inherited by the Ray processes started below
        # Ray reads the variable once, when `ray` is first imported (ray_constants.ENABLE_RAY_CLUSTER);
        # in a process that imported ray before this call (every CLI command does) the setting above
        # comes too late, and the GCS, raylet and agents listen on all interfaces. Say it again here.
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = ray_constants.env_bool(LOOPBACK_ENV, True)
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=dashboard,
            _node_ip_address=LOCAL_NODE_IP,
            **common,
        )
    return True


@contextlib.contextmanager
def ray_session(
    address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = False
) -> Iterator[None]:
    """`connect_ray` for the length of a `with` block; shuts Ray down after it when this call started it."""
    owns = connect_ray(address, num_cpus=num_cpus, dashboard=dashboard)
    try:
        yield
    finally:
        if owns:
            import ray

            ray.shutdown()


__all__ = ["connect_ray", "ray_session", "resolve_ray_address"]
