"""`maskgit serve`: the Ray Serve sampler, an HTTP ingress in front of a batching model deployment.

Two deployments, thin adapters over `jobs/serve/engine.py` and `jobs/serve/ingress.py`
(docs/architecture.md#conventions):

* `MaskGITSampler` holds a `SamplerEngine` (transformer + VQGAN, loaded once per replica). With
  `batching="continuous"` (the default) it runs a `jobs.serve.continuous.ContinuousSampler`: every
  request joins the running decode loop at the next step boundary, whatever its knobs, and leaves
  when its own steps are done; one forward pass per step holds at most 2 × `max_batch_images` rows.
  `run(job)` returns the JobOutput / JobFailure; `stream(job, previews)` (a streaming handle call)
  yields a `StepEvent` per decoding step, then it. A cancelled call frees the job's rows.
  With `batching="merge"`, its
  `@serve.batch` queue counts **images**, not requests (`batch_size_fn=count_images`): requests are
  merged into one sampler call up to `max_batch_images` images, and the engine splits a batch into
  one `sample()` call per group of equal knobs. `max_ongoing_requests` is 2 × `max_batch_images`,
  so the replica accepts enough requests to fill a batch while the previous one runs (Serve's
  default of 5 would silently cap the batch, ray#43288). Sampling runs on the replica's user event
  loop, not in a thread: Serve forms the next batch as soon as one is handed to the batch function,
  so a sampler in a thread would leave a stream of 1-3-image batches queued behind it (measured
  mean batch 2.9 of 16 at concurrency 16); blocking the loop lets the requests that arrive meanwhile
  all join the next batch.
* `MaskGITIngress` serves the FastAPI app (`/v1/generate`, `/v1/inpaint`, `/v1/images/generations`,
  `/v1/images/edits`, `/v1/health`, `/v1/models`, `/docs`, the web page at `/`), validates requests and
  forwards `SampleJob`s to the sampler (`run`, or `stream` for server-sent step events).

Scaling: `replicas` fixed sampler replicas, or autoscaling with `max_replicas` (Serve's
`autoscaling_config`: `min_replicas` … `max_replicas`, `target_ongoing_requests = max_batch_images`,
i.e. add a replica when each has about a full batch waiting). `num_gpus` per replica (fractions
share a GPU) with `autocast_bf16` for bfloat16; CPU otherwise. A `deployments:` section in a Serve
config file (see `jobs/serve/config.yaml`) overrides these per deployment.

Entry points:

    maskgit serve --transformer DIR --tokenizer DIR [--port 8000] [--duration S | --detach]
    serve run jobs/serve/config.yaml                    # or: serve deploy jobs/serve/config.yaml
    serve run jobs.serve.app:app_builder transformer=DIR tokenizer=DIR
    url = start_server(ServeOptions(transformer=..., tokenizer=...))   # from Python
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from jobs.options import add_ray_address_argument, add_storage_options_argument, options_from_args
from jobs.ray_session import connect_ray, resolve_ray_address
from jobs.serve.schema import ServeOptions

logger = logging.getLogger(__name__)

SAMPLER_DEPLOYMENT = "MaskGITSampler"
INGRESS_DEPLOYMENT = "MaskGITIngress"


def _deployments():
    """The two deployment classes (built on first use so `maskgit --help` never imports Ray)."""
    from ray import serve
    from ray.exceptions import TaskCancelledError

    from jobs.serve.continuous import ContinuousSampler
    from jobs.serve.engine import JobFailure, JobOutput, SampleJob, SamplerEngine, StepEvent, count_images
    from jobs.serve.ingress import build_http_app

    @serve.deployment(name=SAMPLER_DEPLOYMENT)
    class MaskGITSampler:
        """One replica: a loaded model and an image-counting batch queue in front of it."""

        def __init__(self, options: dict[str, Any]):
            opts = ServeOptions.from_dict(options)
            self.engine = SamplerEngine(
                opts.transformer,
                opts.tokenizer,
                name=opts.display_name,
                device=opts.device,
                autocast_bf16=opts.autocast_bf16,
                storage_options=opts.storage_options,
            )
            self._sample_batch.set_max_batch_size(opts.max_batch_images)
            self._sample_batch.set_batch_wait_timeout_s(opts.batch_wait_timeout_s)
            self.continuous = None
            if opts.batching == "continuous":  # a guided image takes two rows of the forward
                self.continuous = ContinuousSampler(self.engine, max_rows=2 * opts.max_batch_images)

        def info(self) -> dict[str, Any]:
            return {**self.engine.info(), "batching": "continuous" if self.continuous else "merge"}

        def ping(self) -> bool:
            return True

        async def run(self, job: SampleJob) -> JobOutput | JobFailure:
            # A cancelled call (the client went away) raises CancelledError in here, which frees the
            # job's rows at the next step (ContinuousSampler.run).
            if self.continuous is not None:
                return await self.continuous.run(job)
            return await self._sample_batch(job)

        async def stream(self, job: SampleJob, previews: str = "tokens"):
            """StepEvent after each decoding step, then the JobOutput or JobFailure ("merge": only that)."""
            if self.continuous is None:
                yield await self._sample_batch(job)
                return
            async for event in self.continuous.stream(job, previews):
                yield event

        # Sizes are replaced from the options in __init__; these are Serve's decorator defaults.
        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, batch_size_fn=count_images)
        async def _sample_batch(self, jobs: list[SampleJob]) -> list[JobOutput | JobFailure]:
            # Deliberately blocking: Serve forms the next batch as soon as this one is handed over
            # (batching.py `_process_batches`), so running the sampler in a thread would let a stream of
            # small batches form behind it. Blocking the replica's user event loop instead leaves new
            # requests waiting, and they all join the next batch. Serve runs user code on its own loop
            # thread (RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=1, the default), so the replica's
            # health checks are unaffected; our `ping` waits at most one batch.
            return self.engine.run(jobs)

    class _HandleSampler:
        """`jobs.serve.ingress.Sampler` over a deployment handle.

        A client that goes away cancels its request; the handle then raises Ray's cancellation error
        (an `Exception`, which the ingress would report as a failed sampler). It is turned back into
        `asyncio.CancelledError` and logged at INFO: a disconnect is routine, not a server error.
        """

        def __init__(self, handle):
            self.handle = handle

        async def run(self, job: SampleJob) -> JobOutput | JobFailure:
            try:
                return await self.handle.run.remote(job)
            except TaskCancelledError:  # RequestCancelledError included
                logger.info("the client went away; its request was cancelled")
                raise asyncio.CancelledError from None

        async def stream(
            self, job: SampleJob, previews: str = "tokens"
        ) -> AsyncIterator[StepEvent | JobOutput | JobFailure]:
            try:
                async for event in self.handle.options(stream=True).stream.remote(job, previews):
                    yield event
            except TaskCancelledError:
                logger.info("the client went away; its streamed request was cancelled")
                raise asyncio.CancelledError from None

        async def ping(self) -> bool:
            return bool(await self.handle.ping.remote())

    @serve.deployment(name=INGRESS_DEPLOYMENT)
    @serve.ingress()
    class MaskGITIngress:
        """HTTP ingress: the FastAPI app, built once the sampler has said what it serves."""

        async def __init__(self, sampler, options: dict[str, Any], api_key_digests: tuple[str, ...] = ()):
            self.options = ServeOptions.from_dict(options)
            self.sampler = _HandleSampler(sampler)
            self.info = await sampler.info.remote()
            self.api_key_digests = api_key_digests

        def __serve_build_asgi_app__(self):
            app = build_http_app(self.sampler, self.info, self.options, self.api_key_digests)
            app.add_middleware(_DisconnectAsMessage)  # outermost inside Starlette's error middleware
            return app

    class _DisconnectAsMessage:
        """Serve's ASGI `receive` raises TaskCancelledError once the client has gone away; a streamed
        answer watching `receive` for a disconnect would have Starlette log it as an ERROR with a
        traceback. Hand the app ASGI's own `http.disconnect` message instead (Serve's proxy already
        logs the disconnect at INFO)."""

        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            async def receive_or_disconnect():
                try:
                    return await receive()
                except TaskCancelledError:
                    return {"type": "http.disconnect"}

            return await self.app(scope, receive_or_disconnect, send)

    return MaskGITSampler, MaskGITIngress


def build_app(options: ServeOptions):
    """The Serve application (ingress bound to the sampler) for `options`.

    API keys (`options.api_key_file`, $MASKGIT_API_KEYS) are read here, in the process that builds
    the application; the ingress gets their SHA-256 digests only.
    """
    from jobs.serve.auth import key_digests

    digests = key_digests(options.api_key_file)
    sampler_cls, ingress_cls = _deployments()
    scaling: dict[str, Any] = {"num_replicas": options.replicas}
    if options.max_replicas is not None:
        scaling = {
            "autoscaling_config": {
                "min_replicas": options.min_replicas,
                "max_replicas": options.max_replicas,
                "target_ongoing_requests": options.max_batch_images,
            }
        }
    sampler = sampler_cls.options(
        max_ongoing_requests=options.sampler_max_ongoing_requests,
        ray_actor_options={"num_cpus": options.num_cpus, "num_gpus": options.num_gpus},
        **scaling,
    ).bind(options.to_dict())
    return ingress_cls.options(
        max_ongoing_requests=options.ingress_max_ongoing_requests,
        # The ingress waits on the sampler; it needs no CPU slot of its own.
        ray_actor_options={"num_cpus": 0},
    ).bind(sampler, options.to_dict(), digests)


def app_builder(args: dict[str, Any]):
    """Application builder for `serve run jobs.serve.app:app_builder key=value …` and the YAML's `args`."""
    return build_app(ServeOptions.from_dict(dict(args)))


def server_url(options: ServeOptions) -> str:
    """Base URL of the application (no trailing slash)."""
    return f"http://{options.host}:{options.port}{options.route_prefix.rstrip('/')}"


def bind_warning(host: str, *, keyed: bool) -> str | None:
    """The warning for serving on a non-loopback address without API keys (None: nothing to say)."""
    if keyed or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:  # a host name: it may well resolve to a public interface
        pass
    return (
        f"serving on {host}, which other machines can reach, with no API key: anyone who can connect can "
        "run the sampler. Give --api-key-file or $MASKGIT_API_KEYS, or bind 127.0.0.1 behind a proxy."
    )


def check_checkpoints(options: ServeOptions) -> None:
    """Fail before starting anything when the checkpoints are missing or do not belong together.

    Paths may be URLs: only the configs are read here; each replica loads the weights itself.

    Raises:
        FileNotFoundError: a checkpoint path that does not exist.
        ValueError: our folders whose codebook sizes differ (reference files are checked at load).
    """
    from generation import check_compatible
    from storage.filesystem import url_to_fs
    from tokenizer.checkpoint import read_vqgan_config
    from transformer.checkpoint import read_transformer_config
    from weights import is_model_folder

    so = options.storage_options
    for name in ("transformer", "tokenizer"):
        fs, path = url_to_fs(getattr(options, name), so)
        if not fs.exists(path):
            raise FileNotFoundError(f"--{name} {getattr(options, name)} does not exist")
    if is_model_folder(options.transformer, so) and is_model_folder(options.tokenizer, so):
        check_compatible(
            read_transformer_config(options.transformer, storage_options=so),
            read_vqgan_config(options.tokenizer, storage_options=so),
        )


def start_server(options: ServeOptions, *, ray_address: str | None = None) -> str:
    """Start Ray (if needed), Serve's HTTP proxy and the application; return its base URL.

    Returns once the application is running (models loaded). `stop_server()` undoes it.

    Args:
        options: what to serve and how.
        ray_address: Ray cluster to join (default: the running one, RAY_ADDRESS, or a new local one).

    Returns:
        e.g. "http://127.0.0.1:8000"; `POST {url}/v1/generate`.
    """
    from ray import serve

    from jobs.serve.auth import key_digests

    check_checkpoints(options)
    warning = bind_warning(options.host, keyed=bool(key_digests(options.api_key_file)))
    if warning:
        logger.warning(warning)
    connect_ray(ray_address)  # stays up for the app; stop_server() shuts it down
    serve.start(http_options={"host": options.host, "port": options.port})
    serve.run(
        build_app(options),
        name=options.app_name,
        route_prefix=options.route_prefix,
        blocking=False,
    )
    url = server_url(options)
    logger.info("serving %s at %s (docs: %s/docs)", options.display_name, url, url)
    return url


def _is_ray_process(proc) -> bool:
    """A process of Ray's node (never another child of this process, such as a test's S3 server)."""
    import psutil

    try:
        name, cmdline = proc.name(), proc.cmdline()
    except psutil.Error:
        return False
    return (
        name.startswith("ray::")
        or name in ("raylet", "gcs_server")
        or any("site-packages/ray/" in part for part in cmdline)
    )


def stop_server(*, shutdown_ray: bool = True) -> None:
    """Shut Serve down (and Ray, when this process started it), leaving no process of ours behind.

    `ray.shutdown()` stops the GCS and the raylet, but the raylet's dashboard and runtime-env agents
    can outlive it by many seconds (seen after SIGTERM); every process this one started is waited
    for briefly, then terminated, by process id.
    """
    import psutil  # a Ray dependency
    import ray
    from ray import serve

    if ray.is_initialized():  # (nothing to shut down when starting failed before Ray was up)
        serve.shutdown()
    if shutdown_ray and ray.is_initialized():
        ours = [proc for proc in psutil.Process().children(recursive=True) if _is_ray_process(proc)]
        ray.shutdown()
        _, alive = psutil.wait_procs(ours, timeout=3)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(alive, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


# ---------------------------------------------------------------------------------------------------
# CLI


@dataclass(frozen=True)
class ServeRun:
    """How `maskgit serve` runs the application (what to serve is `ServeOptions`).

    Attributes:
        ray_address: Ray cluster to join (see `jobs.ray_session`; None: $RAY_ADDRESS, else a local Ray).
        duration: serve this many seconds, then stop (None: until Ctrl-C).
        detach: return once serving; the app keeps running on the cluster (needs a cluster to join).
    """

    ray_address: str | None = None
    duration: float | None = None
    detach: bool = False

    def __post_init__(self) -> None:
        if self.detach and not resolve_ray_address(self.ray_address):
            # A cluster this process starts dies with it; detaching needs one that outlives the command.
            raise ValueError(
                "--detach needs a running Ray cluster (ray start --head) given by --ray-address or "
                "RAY_ADDRESS"
            )


def run_serve(options: ServeOptions, run: ServeRun) -> str:
    """Serve `options` until `run.duration` passes, Ctrl-C or SIGTERM (at once with `run.detach`).

    SIGTERM (what systemd, Docker and Kubernetes send) stops like Ctrl-C: Serve, then the Ray this
    command started, with every process of it, within a few seconds.

    Returns:
        the base URL.
    """

    def _terminate(signum, frame):
        raise KeyboardInterrupt  # unwinds into the `finally` below, wherever the main thread is

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        url = start_server(options, ray_address=run.ray_address)
        # ray.init put in its own SIGTERM handlers (Python's sys.exit, and the core worker's crash
        # handler, which kills the process a few seconds later: mid-shutdown). Ours again:
        signal.signal(signal.SIGTERM, _terminate)
        print(f"serving {options.display_name} at {url}  (web page: {url}/, API docs: {url}/docs)",
              flush=True)  # fmt: skip
        if run.detach:
            return url
        deadline = None if run.duration is None else time.monotonic() + run.duration
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping", flush=True)
        url = server_url(options)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not run.detach:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the shutdown short
            try:
                stop_server()
            finally:
                signal.signal(signal.SIGTERM, previous)
    return url


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand; flag dests are `ServeOptions` and `ServeRun` fields."""
    parser = subparsers.add_parser(
        "serve",
        help="serve generation and inpainting over HTTP (Ray Serve)",
        description="Start Ray Serve with the MaskGIT sampler: a web page at /, POST /v1/generate, "
        "POST /v1/inpaint (both can stream steps), POST /v1/images/generations and /v1/images/edits "
        "(OpenAI-shaped), GET /v1/health, GET /v1/models, /docs. Blocks until Ctrl-C or SIGTERM unless "
        "--duration or --detach.",
    )
    d = ServeOptions(transformer="-", tokenizer="-")
    add = parser.add_argument
    add("--transformer", required=True, help="transformer checkpoint folder (or reference .pth)")
    add("--tokenizer", required=True, help="VQGAN checkpoint folder (or taming checkpoint)")
    add(
        "--model-name",
        default=d.model_name,
        help="public model name (default: the transformer folder's name)",
    )
    add("--host", default=d.host, help=f"HTTP bind address ({d.host})")
    add("--port", type=int, default=d.port, help=f"HTTP port ({d.port})")
    add("--route-prefix", default=d.route_prefix, help=f"URL prefix ({d.route_prefix})")
    add("--replicas", type=int, default=d.replicas, help=f"sampler replicas ({d.replicas})")
    add(
        "--min-replicas",
        type=int,
        default=d.min_replicas,
        help=f"autoscaling minimum, with --max-replicas ({d.min_replicas})",
    )
    add(
        "--max-replicas",
        type=int,
        default=d.max_replicas,
        help="enable autoscaling up to this many sampler replicas",
    )
    add("--num-gpus", type=float, default=d.num_gpus, help=f"GPUs per sampler replica ({d.num_gpus})")
    add("--num-cpus", type=float, default=d.num_cpus, help=f"CPUs per sampler replica ({d.num_cpus})")
    add("--device", default=d.device, help=f"auto | cpu | cuda ({d.device})")
    add_storage_options_argument(parser)
    add(
        "--batching",
        choices=("continuous", "merge"),
        default=d.batching,
        help="continuous: requests join and leave the running decode loop at step boundaries, any knobs "
        f"sharing each forward pass; merge: Serve batches of equal knobs ({d.batching})",
    )
    add(
        "--max-batch-images",
        type=int,
        default=d.max_batch_images,
        help=f"most images per sampler call ({d.max_batch_images})",
    )
    add(
        "--batch-wait-timeout-s",
        type=float,
        default=d.batch_wait_timeout_s,
        help=f"seconds a partial batch waits for more requests ({d.batch_wait_timeout_s})",
    )
    add(
        "--max-images-per-request",
        type=int,
        default=d.max_images_per_request,
        help=f"limit on images per request ({d.max_images_per_request})",
    )
    add("--max-steps", type=int, default=d.max_steps, help=f"limit on decoding steps ({d.max_steps})")
    add(
        "--max-payload-bytes",
        type=int,
        default=d.max_payload_bytes,
        help=f"limit on request body size ({d.max_payload_bytes})",
    )
    add(
        "--max-image-side",
        type=int,
        default=d.max_image_side,
        help=f"limit on uploaded image sides ({d.max_image_side})",
    )
    add("--bf16", dest="autocast_bf16", action="store_true", help="bfloat16 autocast")
    add(
        "--api-key-file",
        default=None,
        help="file of API keys, one per line (also $MASKGIT_API_KEYS, comma-separated): /v1/ routes but "
        "/v1/health then need 'Authorization: Bearer <key>'",
    )
    add_ray_address_argument(parser)
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=float, default=None, help="serve this many seconds, then stop")
    stop.add_argument(
        "--detach", action="store_true", help="return once serving (the app keeps running on the cluster)"
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    run = options_from_args(ServeRun, args)  # checks --detach before anything starts
    run_serve(options_from_args(ServeOptions, args), run)
    return 0
