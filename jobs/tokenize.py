"""`maskgit tokenize`: a Ray job that turns an image dataset into a token store, exactly once.

The plan (pipeline.sources.plan_sources) is a pure function of the sorted input listing and the shard
size, so every run of the same command computes the same shard tasks. The store's `_plan.json` pins
the settings (tokenizer sha256, resolution, views, format, shard size, listing digest): a rerun with
other settings is an error, not a silent mix. Shards whose commit record exists and whose object
verifies are skipped; the others stream through Ray, one shard at a time per stage:

    shard task --_prepare (CPU task)--> images, labels, rejects   read + decode + short-side resize + crop
               --TokenizeBatch (Ray actor)--> tokens              VQGAN loaded once per actor
               --_write (CPU task)--> one shard object + its commit record (TokenStoreWriter.write_shard)

The tokenizer actors are started before the driver lists the input (for a store without a manifest:
a new or unfinished run), so their start-up (a fresh worker importing torch and loading the VQGAN:
seconds) overlaps planning and the decoding of the first shards instead of preceding them.

Memory stays bounded: a fixed number of shards is in flight (objects in Ray's store), and the driver
keeps only the small per-shard commit infos. `manifest.json` is written last, by the driver, after
every shard is committed. Credentials come from the standard AWS environment or `--storage-options`
and are never printed.

Whatever the cluster has left, the job never waits forever (issue 22). A shard whose node, actor or
objects were lost is sent again to another live actor (still exactly once: a shard's object and
commit record are named by its index). After 15 s without a commit the driver checks that a decode
task (1 CPU) still fits on a live node beside the tokenizer actors (a restarted actor may have taken
the last CPU); if not, it drops an actor and sends that actor's shards to the others, and with one
actor left it fails with an error naming the missing CPUs (add a node or lower --actors /
--num-cpus-per-actor; a rerun resumes).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from jobs.options import add_ray_address_argument, add_storage_options_argument, options_from_args
from jobs.ray_session import ray_session
from pipeline.store import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    STORE_FORMATS,
    VIEWS,
    ShardCommit,
    StoreManifest,
    TokenShard,
    TokenStoreWriter,
)

if TYPE_CHECKING:
    from pipeline.sources import SourcePlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizeOptions:
    """Settings of one tokenization run; the first block decides the store's content.

    Attributes:
        input: image folder tree, WebDataset tars (folder, glob or brace pattern) or Parquet; local or s3://.
        output: store URL (local path or s3://bucket/prefix).
        tokenizer: VQGAN folder (config.json + model.safetensors) or checkpoint; local or remote.
        store_format: "arrow" or "zarr".
        resolution: pixels of the square model input (short side resized, then center crop).
        flip: also store the tokens of the horizontally flipped image.
        shard_size: images per shard (folder), rows per shard (Parquet); a tar is one shard.
        input_format: "folder" | "webdataset" | "parquet"; None detects it from the input.
        class_map: class map file (JSON list / object or one name a line); None = sorted folder names.
        batch_size: images per VQGAN forward pass.
        actors: tokenizer actors.
        num_gpus_per_actor: None = 1 when the cluster has GPUs, else 0.
        num_cpus_per_actor: CPU reservation of a tokenizer actor (fractional avoids 2-CPU deadlocks).
        threads_per_actor: torch threads per CPU actor; None = this node's cores / actors.
        storage_options: fsspec options for input, output and tokenizer (None = AWS environment).
        ray_address: cluster to join; None joins RAY_ADDRESS (as under `ray job submit`) or starts one.
        num_cpus: CPUs of a locally started Ray (None = all).
        progress: show a progress bar of committed shards.
    """

    input: str
    output: str
    tokenizer: str
    store_format: str = "arrow"
    resolution: int = 256
    flip: bool = False
    shard_size: int = 256
    input_format: str | None = None
    class_map: str | None = None
    batch_size: int = 32
    actors: int = 1
    num_gpus_per_actor: float | None = None
    num_cpus_per_actor: float = 0.5
    threads_per_actor: int | None = None
    storage_options: dict[str, Any] | None = None
    ray_address: str | None = None
    num_cpus: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.store_format not in STORE_FORMATS:
            raise ValueError(f"--format must be one of {STORE_FORMATS}, got {self.store_format!r}")
        for name in ("resolution", "shard_size", "batch_size", "actors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class TokenizeSummary(NamedTuple):
    """What a run did; `images`/`rejects`/`bytes` cover the whole store, the rest this run."""

    output: str
    images: int
    rejects: int
    shards: int
    shards_written: int
    shards_skipped: int
    bytes: int
    seconds: float
    images_per_s: float  # images tokenized by this run / seconds
    manifest: StoreManifest
    devices: tuple[str, ...] = ()  # the devices the tokenizer actors encoded on ("cpu", "cuda:0")


# --- pipeline stages (run in Ray workers) ---------------------------------------------------------


def _prepare(task_json: str, *, resolution: int, storage_options, class_map) -> dict[str, Any]:
    """Shard task -> its decoded, resized images (n, R, R, 3) uint8, labels, ids and rejects."""
    from jobs.node_paths import describe_this_node
    from pipeline.sources import InputNotVisibleError, ShardTask, prepare_shard

    task = ShardTask.from_json(task_json)
    try:
        shard = prepare_shard(task, resolution, storage_options=storage_options, class_map=class_map)
    except InputNotVisibleError as error:  # say which node: the driver names the flag
        raise InputNotVisibleError(error.root, error.listed, error.detail, describe_this_node()) from None
    return {
        "index": task.index,
        "images": shard.images,
        "labels": shard.labels.astype(np.int64),
        "image_ids": shard.image_ids.tolist(),
        "rejects": shard.rejects,
    }


def _write(encoded: dict[str, Any], *, output, store_format, storage_options) -> tuple[int, ShardCommit]:
    """Tokens of one shard -> one shard object + its commit record; returns (index, commit)."""
    labels = encoded["labels"]
    shard = TokenShard(encoded["tokens"], labels, np.asarray(encoded["image_ids"], dtype=str))
    extra = {"max_label": int(labels.max()) if len(labels) else -1}
    writer = TokenStoreWriter(output, storage_options)
    info = writer.write_shard(encoded["index"], shard, store_format, encoded["rejects"], extra)
    return encoded["index"], ShardCommit(info, list(encoded["rejects"]), extra)


# --- driver ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _tokenizer_actors(options: TokenizeOptions) -> Iterator[list]:
    """Join or start Ray and start the tokenizer actors; they are killed (and a Ray this call started
    is shut down) when the block ends. The actors load the VQGAN in the background: the caller plans
    meanwhile, and the first call waits for its actor's start-up. Each actor is a `TokenizeBatch`
    (pipeline/tokenize.py) as it is: the job calls its `__call__` on each prepared shard."""
    import ray

    from pipeline.tokenize import TokenizeBatch

    with ray_session(options.ray_address, num_cpus=options.num_cpus):
        gpus = options.num_gpus_per_actor
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        actor_class = ray.remote(TokenizeBatch).options(
            num_cpus=options.num_cpus_per_actor, num_gpus=gpus, max_restarts=3, max_task_retries=3
        )
        actors = [
            actor_class.remote(
                options.tokenizer,
                flip=options.flip,
                batch_size=options.batch_size,
                num_threads=options.threads_per_actor,
                instances_per_node=options.actors,  # a CPU actor's torch threads: the node's cores / actors
                storage_options=options.storage_options,
            )
            for _ in range(options.actors)
        ]
        try:
            yield actors
        finally:
            for actor in actors:
                ray.kill(actor)


class _Flight(NamedTuple):
    """One shard in flight: its task, the actor it went to, its decode ref and how often it was resent."""

    task: Any
    actor: int
    prepared: Any
    resent: int


_DECODE_CPUS = 1.0  # a _prepare task's CPU reservation
_POLL_S = 2.0  # ray.wait timeout: how often the driver looks at a stalled job
_STALL_S = 15.0  # no commit for this long: check that decode tasks still fit beside the actors
_RESENDS = 3  # times one shard is sent again after its node, actor or objects were lost


def _make_room(options: TokenizeOptions, actors: list, live: list[int]) -> None:
    """No commit for `_STALL_S`: drop an actor when decode tasks can no longer run beside the actors
    (or an actor that cannot be placed again), else nothing; raises when no actor would be left."""
    import ray

    from jobs.actor_fit import actor_places, room_beside

    places = dict(zip(live, actor_places([actors[i] for i in live])))
    room = room_beside(list(places.values()), options.num_cpus_per_actor)
    alive = [i for i in live if places[i].state == "ALIVE"]
    if room.most_free >= _DECODE_CPUS:  # decode tasks fit: drop actors that cannot be placed again
        if not alive and options.num_cpus_per_actor <= room.most_free:
            return  # a restart in progress
        victims = [i for i in live if i not in alive]
    elif len(alive) > 1:  # decode tasks wait for a CPU the actors hold: one actor makes way
        victims = [max(i for i in alive if places[i].node_id == room.crowded_node)]
    else:
        victims = live
    if len(victims) == len(live):
        raise RuntimeError(
            f"no shard committed for {_STALL_S:.0f} s and none can be: the cluster has {room.cpus:g} CPUs "
            f"on its live nodes, the tokenizer actors ({len(alive)} of {len(live)} running) hold "
            f"{room.held:g} of them (at most {room.most_free:g} left on one node), an actor needs "
            f"{options.num_cpus_per_actor:g} and a decode task needs {_DECODE_CPUS:g}: add a node or lower "
            "--actors / --num-cpus-per-actor, then rerun the same command to resume"
        )
    for victim in victims:
        log.warning(
            "dropping tokenizer actor %d (%s) so the decode tasks fit: %s", victim, places[victim], room
        )
        ray.kill(actors[victim], no_restart=True)  # its shards fail with ActorDiedError and are resent
        live.remove(victim)


def _run_pending(options: TokenizeOptions, actors: list, pending, *, class_map) -> dict[int, ShardCommit]:
    """Stream the pending shard tasks through prepare (CPU tasks) -> an actor's call -> write (tasks).

    At most `2 · actors + 2` shards are in flight (submitted, not committed), which bounds memory and
    keeps each actor's next shard decoded before it finishes the current one. Each shard goes to the
    live actor with the fewest shards in flight.

    Lost nodes never leave the job waiting forever (issue 22). A shard whose node, actor or objects
    were lost is sent again (at most `_RESENDS` times); its object and commit record are named by its
    index, so a resend can only rewrite the same bytes: each shard is still committed once. When no
    shard commits for `_STALL_S` and no live node has a CPU left beside the actors (a restarted actor
    took the last one, so decode tasks stay pending), an actor is dropped and its shards go to the
    others; when none would be left, the job fails with an error naming the missing CPUs.
    """
    import ray
    from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, RayTaskError, WorkerCrashedError
    from tqdm import tqdm

    from pipeline.sources import InputNotVisibleError

    lost_kinds = (RayActorError, ObjectLostError, NodeDiedError, WorkerCrashedError)  # node, actor or object

    so = options.storage_options
    prepare = ray.remote(_prepare).options(num_cpus=_DECODE_CPUS)
    write = ray.remote(_write).options(num_cpus=0.1)  # I/O bound: leaves the cores to decoding, encoding
    load = [0] * len(actors)
    live = list(range(len(actors)))  # actors not dropped
    in_flight: dict[Any, _Flight] = {}  # commit ref -> its shard

    def submit(task, resent: int = 0, avoid: int | None = None) -> None:
        others = [i for i in live if i != avoid]  # a shard lost with its actor goes to another one
        actor = min(others or live, key=load.__getitem__)
        prepared = prepare.remote(
            task.to_json(), resolution=options.resolution, storage_options=so, class_map=class_map
        )
        encoded = actors[actor].__call__.remote(prepared)  # TokenizeBatch: "images" -> "tokens"
        ref = write.remote(
            encoded, output=options.output, store_format=options.store_format, storage_options=so
        )
        in_flight[ref] = _Flight(task, actor, prepared, resent)
        load[actor] += 1

    tasks = iter(pending)
    commits: dict[int, ShardCommit] = {}
    try:
        for task in itertools.islice(tasks, 2 * len(actors) + 2):
            submit(task)
        bar = tqdm(total=len(pending), desc="shards committed", unit="shard", disable=not options.progress)
        with bar:
            progress = time.monotonic()
            while in_flight:
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=_POLL_S)
                if not done and time.monotonic() - progress > _STALL_S:
                    _make_room(options, actors, live)
                    progress = time.monotonic()
                for ref in done:
                    flight = in_flight.pop(ref)
                    load[flight.actor] -= 1
                    try:
                        index, commit = ray.get(ref)
                    except (RayTaskError, *lost_kinds) as error:
                        # A task whose input was lost (the actor's node died) raises a RayTaskError that
                        # is also an instance of the loss (ray.get's `as_instanceof_cause`).
                        cause = error.cause if isinstance(error, RayTaskError) else error
                        if isinstance(cause, InputNotVisibleError):  # not a bad image: a bad --input
                            raise FileNotFoundError(
                                f"--input {options.input}: the driver listed {cause.listed} files for "
                                f"shard {flight.task.index} but a worker on {cause.where} sees none of "
                                "them; put the input where every node can read it (s3://..., a shared "
                                "filesystem)"
                            ) from None
                        lost = isinstance(error, lost_kinds) or isinstance(cause, lost_kinds)
                        if not lost or flight.resent >= _RESENDS:
                            raise
                        log.warning(
                            "shard %d lost (%s); sending it again", flight.task.index, type(error).__name__
                        )
                        ray.cancel(flight.prepared)  # a decode still waiting for a CPU is not needed
                        submit(flight.task, flight.resent + 1, avoid=flight.actor)
                        continue
                    progress = time.monotonic()
                    commits[index] = commit
                    bar.update(1)
                    task = next(tasks, None)
                    if task is not None:
                        submit(task)
    finally:
        for ref in in_flight:  # after an error: stop the rest (a finished shard stays committed)
            ray.cancel(ref)
    return commits


def _verified_commits(writer: TokenStoreWriter, indices: list[int]) -> dict[int, ShardCommit]:
    """Commit records whose shard object exists and matches its checksum (others get redone)."""
    candidates = sorted(writer.committed_indices() & set(indices))
    with ThreadPoolExecutor(max_workers=16) as pool:
        found = pool.map(lambda i: (i, writer.read_commit(i, verify=True)), candidates)
        return {index: commit for index, commit in found if commit is not None}


class _Plan(NamedTuple):
    """What the driver works out before any shard is tokenized."""

    sources: SourcePlan  # the shard tasks and what they were listed from
    class_map: Any  # pipeline.sources.load_class_map's result, None: sorted folder names
    identity: dict[str, Any]  # the tokenizer's config and weights sha256
    codebook_size: int
    grid: tuple[int, int]  # (h, w) tokens per image
    views: tuple[str, ...]
    settings: dict[str, Any]  # pinned in the store's _plan.json


def _plan(options: TokenizeOptions) -> _Plan:
    """List the input, identify the tokenizer and work out the settings the store pins."""
    from pipeline.sources import load_class_map, plan_sources
    from pipeline.tokenize import tokenizer_identity
    from tokenizer.families import tokenizer_config_from_dict

    so = options.storage_options
    class_map = load_class_map(options.class_map, so) if options.class_map else None
    plan = plan_sources(
        options.input,
        input_format=options.input_format,
        shard_size=options.shard_size,
        class_map=class_map,
        storage_options=so,
    )
    identity = tokenizer_identity(options.tokenizer, so)
    config = tokenizer_config_from_dict(identity["config"])
    grid = config.grid_shape(options.resolution, options.resolution)
    if config.codebook_size > 65536:
        raise ValueError(f"a codebook of {config.codebook_size} codes does not fit the store's uint16 tokens")
    views = VIEWS[: 2 if options.flip else 1]
    settings = {
        "format_version": FORMAT_VERSION,
        "store_format": options.store_format,
        "resolution": options.resolution,
        "views": list(views),
        "shard_size": options.shard_size,
        "input_format": plan.input_format,
        "sources": list(plan.sources),
        "num_inputs": plan.num_inputs,
        "listing_sha256": plan.listing_sha256,
        "num_shards": len(plan.tasks),
        "class_names": list(plan.class_names),
        "tokenizer": identity,
    }
    return _Plan(plan, class_map, identity, config.codebook_size, grid, views, settings)


def _commit_manifest(
    options: TokenizeOptions, plan: _Plan, writer: TokenStoreWriter, ordered: list[ShardCommit]
) -> StoreManifest:
    """Write `manifest.json` over every shard's commit, last; returns the manifest."""
    class_names = plan.sources.class_names
    if not class_names:  # tar / Parquet without a class map: labels 0..max seen
        top = max((c.extra or {}).get("max_label", -1) for c in ordered)
        class_names = tuple(str(i) for i in range(top + 1))
    return writer.commit(
        StoreManifest(
            store_format=options.store_format,
            codebook_size=plan.codebook_size,
            grid=plan.grid,
            resolution=options.resolution,
            views=plan.views,
            tokenizer=plan.identity,
            class_names=class_names,
            shards=(),
            sources=plan.sources.sources,
            settings=plan.settings,
            created_by="maskgit tokenize (maskgit-pipeline)",
        ),
        ordered,
    )


def _check_worker_paths(options: TokenizeOptions, plan: _Plan) -> None:
    """The workers read the listed input and the tokenizer and write the store: on a cluster whose
    nodes share no filesystem, a local path among them fails here, naming its flag (jobs.node_paths)."""
    from jobs.node_paths import WorkerPath, check_worker_paths

    check_worker_paths(
        [
            *(WorkerPath("--input", source, given=options.input) for source in plan.sources.sources),
            WorkerPath("--tokenizer", options.tokenizer),
            WorkerPath("--output", options.output, writes=True),
        ]
    )


def _refuse_empty_store(options: TokenizeOptions, plan: _Plan, ordered: list[ShardCommit]) -> None:
    """A store of 0 samples made from a non-empty input is a failure, not a result: raise, naming why
    (the rejects' reasons) before any manifest makes it look finished."""
    if plan.sources.num_inputs == 0 or any(commit.shard.num_samples for commit in ordered):
        return
    rejects = [reject for commit in ordered for reject in commit.rejects]
    reasons = ", ".join(f"{n} {reason}" for reason, n in Counter(r["reason"] for r in rejects).most_common())
    first = f"; the first: {rejects[0]['source']}: {rejects[0]['detail']}" if rejects else ""
    raise ValueError(
        f"--input {options.input}: none of its {plan.sources.num_inputs} inputs became an image "
        f"({reasons or 'no rejects'}){first}; no manifest written, the store {options.output} is not usable"
    )


def run_tokenize(options: TokenizeOptions) -> TokenizeSummary:
    """Tokenize `options.input` into the token store at `options.output`, resuming what is committed.

    Raises:
        FileNotFoundError: missing input or tokenizer, or (on a cluster whose nodes share no
            filesystem) a local input, tokenizer or output that a worker's node does not see.
        ValueError: bad settings, an existing store begun with other settings (StoreSettingsError),
            or an input of which no file became an image (no manifest is written).
    """
    started = time.perf_counter()
    writer = TokenStoreWriter(options.output, options.storage_options)
    with contextlib.ExitStack() as stack:
        actors = None
        if not writer.fs.exists(f"{writer.root}/{MANIFEST_NAME}"):
            # A new or unfinished store has work to do: the actors start up while the driver plans.
            actors = stack.enter_context(_tokenizer_actors(options))
        plan = _plan(options)
        if actors is not None:  # before the plan is pinned: a path only the driver has fails here
            _check_worker_paths(options, plan)
        tasks = plan.sources.tasks
        writer.ensure_plan(plan.settings)
        commits = _verified_commits(writer, [task.index for task in tasks])
        pending = [task for task in tasks if task.index not in commits]
        log.info(
            "tokenize %s -> %s: %d shards planned, %d already committed, %d to do",
            plan.sources.sources[0],
            options.output,
            len(tasks),
            len(commits),
            len(pending),
        )
        written, devices = {}, ()
        if pending:
            if actors is None:
                actors = stack.enter_context(_tokenizer_actors(options))
            written = _run_pending(options, actors, pending, class_map=plan.class_map)
            devices = _actor_devices(actors)
    missing = [task.index for task in pending if task.index not in written]
    if missing:
        raise RuntimeError(f"shards {missing[:10]} produced no commit; rerun the same command to resume")
    commits.update(written)
    ordered = [commits[task.index] for task in tasks]
    _refuse_empty_store(options, plan, ordered)
    manifest = _commit_manifest(options, plan, writer, ordered)
    seconds = time.perf_counter() - started
    new_images = sum(commit.shard.num_samples for commit in written.values())
    return TokenizeSummary(
        output=options.output,
        images=manifest.num_samples,
        rejects=sum(len(c.rejects) for c in ordered),
        shards=len(ordered),
        shards_written=len(written),
        shards_skipped=len(ordered) - len(written),
        bytes=sum(c.shard.bytes for c in ordered),
        seconds=seconds,
        images_per_s=new_images / seconds if seconds > 0 else 0.0,
        manifest=manifest,
        devices=devices,
    )


def _actor_devices(actors: list) -> tuple[str, ...]:
    """The devices the live tokenizer actors encode on (an actor lost with its node is left out)."""
    import ray

    devices = set()
    for actor in actors:
        with contextlib.suppress(ray.exceptions.RayError):
            devices.add(ray.get(actor.device_name.remote(), timeout=60))
    return tuple(sorted(devices))


# --- command line ---------------------------------------------------------------------------------


def _run_cli(args: argparse.Namespace) -> int:
    summary = run_tokenize(options_from_args(TokenizeOptions, args))
    rate = f"{summary.images_per_s:.1f} images/s" if summary.shards_written else "nothing left to do"
    print(
        f"token store {summary.output}: {summary.images} images in {summary.shards} shards "
        f"({summary.shards_written} written, {summary.shards_skipped} already committed), "
        f"{summary.rejects} rejects, {summary.bytes / 2**20:.2f} MiB, {summary.seconds:.1f} s, {rate}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `tokenize` subcommand; every flag's dest is a `TokenizeOptions` field."""
    defaults = TokenizeOptions("", "", "")
    parser = subparsers.add_parser(
        "tokenize",
        help="tokenize an image dataset into a token store (Ray job, resumable)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--input", required=True, help="folder tree, WebDataset tars or Parquet (local/s3://)"
    )
    parser.add_argument("--output", required=True, help="token store URL (local path or s3://bucket/prefix)")
    parser.add_argument("--tokenizer", required=True, help="VQGAN folder or checkpoint (local or remote)")
    parser.add_argument("--format", dest="store_format", choices=STORE_FORMATS, default=defaults.store_format)
    parser.add_argument("--resolution", type=int, default=defaults.resolution)
    parser.add_argument("--flip", action="store_true", help="also store the horizontally flipped view")
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size)
    parser.add_argument("--input-format", choices=("folder", "webdataset", "parquet"), default=None)
    parser.add_argument("--class-map", default=None, help="JSON list/object or text file of class names")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--actors", type=int, default=defaults.actors)
    parser.add_argument("--num-gpus-per-actor", type=float, default=None, help="default: 1 if GPUs exist")
    parser.add_argument("--num-cpus-per-actor", type=float, default=defaults.num_cpus_per_actor)
    parser.add_argument("--threads-per-actor", type=int, default=None)
    add_storage_options_argument(parser)
    add_ray_address_argument(parser)
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a locally started Ray")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.set_defaults(run=_run_cli)


__all__ = ["TokenizeOptions", "TokenizeSummary", "register", "run_tokenize"]
