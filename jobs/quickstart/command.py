"""`maskgit quickstart`: the whole pipeline on real data, on one machine, with one command.

Fashion-MNIST (Debian's dataset-fashion-mnist, 70k labelled images) goes through every stage the
project offers at cluster scale, on a local Ray and local disk (or, with `--s3`, a local S3 server):

    images folder -> VQGAN training -> Ray tokenization job -> token store
      -> DeepSpeed ZeRO training (2 Ray Train workers) -> exported weights
      -> sample grid -> evaluation (classifier accuracy, FID-EffLite0) -> sampling ablation
      -> (--serve) Ray Serve endpoint answering one request

Each stage prints what it did and where its outputs are, and records itself in `<out>/stages/`; a
rerun reuses finished stages. Everything scales by flags (presets, steps, workers, GPUs), not code.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jobs.options import options_from_args

# The two model families at CPU size. v1: taming VQGAN + MaskTransformer, confidence sampling with the
# linear CFG ramp. v2: LlamaGen VQ + Halton transformer, Halton order, constant CFG (the v2 reference).
FAMILIES = {
    "v1": {"tokenizer": "tiny-f4", "transformer": "tiny", "sampling": {"steps": 8}},
    "v2": {
        "tokenizer": "llamagen-tiny-f4",
        "transformer": "halton-tiny",
        "sampling": {"steps": 8, "order": "halton", "schedule": "halton", "cfg_schedule": "constant"},
    },
}


@dataclass(frozen=True)
class QuickstartOptions:
    """Sizes of every stage; the defaults finish in about 15 minutes on 2 idle CPU cores.

    Departures from the reference recipe, for a run of minutes on a CPU: no GAN phase in the VQGAN;
    no dropout, a higher learning rate (2e-3, 100 warm-up steps) and a cosine decay to 0.1 of it in
    the transformer.
    """

    out: str = "quickstart_out"
    family: str = "v1"
    s3: bool = False
    serve: bool = False
    image_size: int = 32
    train_per_class: int = 1200
    heldout_per_class: int = 100
    classifier_epochs: int = 2
    vqgan_preset: str | None = None  # None: the family's (v1 tiny-f4, v2 llamagen-tiny-f4)
    vqgan_steps: int = 1500
    vqgan_batch_size: int = 32
    vqgan_lr: float = 1e-3
    vqgan_perceptual: str = "none"
    transformer_preset: str | None = None  # None: the family's (v1 tiny, v2 halton-tiny)
    transformer_depth: int | None = None
    transformer_dropout: float = 0.0
    train_steps: int = 3000
    global_batch_size: int = 64
    workers: int = 2
    zero_stage: int = 1
    precision: str = "fp32"
    lr: float = 2e-3
    samples_per_class: int = 10
    eval_per_class: int = 50
    ablation_per_class: int = 50
    compare_samplers: bool = False
    compare_per_class: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"--family must be one of {sorted(FAMILIES)}, got {self.family!r}")

    @property
    def tokenizer_preset(self) -> str:
        return self.vqgan_preset or FAMILIES[self.family]["tokenizer"]

    @property
    def model_preset(self) -> str:
        return self.transformer_preset or FAMILIES[self.family]["transformer"]

    @property
    def sampling(self) -> dict:
        """Sampling settings exported with the weights: 8 steps in the family's own way."""
        return dict(FAMILIES[self.family]["sampling"])


STAGES = (  # in the order they run
    "data",
    "classifier",
    "tokenizer",
    "tokenize",
    "train",
    "sample",
    "fid_stats",
    "evaluate",
    "ablation",
)
# The measured default run that the time estimates scale (written by benchmarks/bench_quickstart.py;
# absent outside a checkout, and then the quickstart prints no estimate).
REFERENCE_RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "quickstart.json"


def reference_stage_seconds(path: Path = REFERENCE_RUN) -> dict[str, float]:
    """Stage -> seconds of the measured reference run ({} when there is none or it cannot be read)."""
    try:
        rows = json.loads(path.read_text())["rows"]
        return {row["stage"]: float(row["seconds"]) for row in rows}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def remaining_estimate(
    reference: dict[str, float], done: dict[str, float], remaining: list[str]
) -> tuple[float, float] | None:
    """(seconds left, pace) for the `remaining` stages: the reference run's seconds for them, scaled by
    this machine's pace so far (seconds of the stages run here over the reference's for the same
    stages; 1.0 before any). None when the reference lacks a stage."""
    if not reference or any(name not in reference for name in remaining):
        return None
    measured = [name for name in done if name in reference and reference[name] > 0]
    pace = sum(done[n] for n in measured) / sum(reference[n] for n in measured) if measured else 1.0
    return pace * sum(reference[name] for name in remaining), pace


class Quickstart:
    """Runs the stages in order, skipping those recorded as done in `<out>/stages/`."""

    def __init__(self, options: QuickstartOptions):
        self.options = options
        self.out = Path(options.out).resolve()
        (self.out / "stages").mkdir(parents=True, exist_ok=True)
        self.s3 = None
        self.remote = ""  # s3:// prefix for the store and the run directory in --s3 mode
        self.plan: list[str] = []  # stage names in order, set by run()
        self.reference = reference_stage_seconds()
        self.measured: dict[str, float] = {}  # seconds of the stages run (not reused) this time

    # ------------------------------------------------------------------------------ plumbing
    def stage(self, name: str, run: Callable[[], dict]) -> dict:
        place = f"{self.plan.index(name) + 1}/{len(self.plan)} {name}" if name in self.plan else name
        marker = self.out / "stages" / f"{name}.json"
        if marker.is_file():
            record = json.loads(marker.read_text())
            print(f"[{place}] reusing the finished stage: {_describe(record)}")
            return record
        print(f"[{place}] running ...{self._time_left(name)}", flush=True)
        start = time.perf_counter()
        record = run()
        record["seconds"] = round(time.perf_counter() - start, 1)
        self.measured[name] = record["seconds"]
        marker.write_text(json.dumps(record, indent=1))
        print(f"[{place}] done in {record['seconds']:.0f} s: {_describe(record)}", flush=True)
        return record

    def _time_left(self, name: str) -> str:
        """' (about 9 min left, ...)' from this run's pace against the reference run, or ''."""
        if name not in self.plan:
            return ""
        later = self.plan[self.plan.index(name) :]
        remaining = [n for n in later if not (self.out / "stages" / f"{n}.json").is_file()]
        estimate = remaining_estimate(self.reference, self.measured, remaining)
        if estimate is None:
            return ""
        seconds, pace = estimate
        basis = "as in the reference run"
        if self.measured:
            basis = f"{pace:.2g}x the reference run's times so far"
        return f" (about {max(1, round(seconds / 60))} min left for the whole quickstart, {basis})"

    def location(self, name: str) -> str:
        """Where a shared artefact lives: the S3 bucket in --s3 mode, else the output folder."""
        return f"{self.remote}/{name}" if self.remote else str(self.out / name)

    def start_services(self) -> None:
        from jobs.ray_session import connect_ray

        if self.options.s3:
            from demo.s3server import LocalS3Server

            self.s3 = LocalS3Server(data_dir=self.out / "s3-data", bucket="maskgit-quickstart").start()
            # Credentials reach every process (Ray workers included) through the standard AWS environment.
            os.environ.update(self.s3.env)
            self.remote = self.s3.url("quickstart")
            print(f"[s3] local S3 server at {self.s3.endpoint_url}, bucket {self.s3.bucket}")
        # A local Ray of its own, even under $RAY_ADDRESS: the quickstart is one machine's demo. At least
        # 4 CPUs, so 2 training workers and the tokenize tasks never wait on each other; the dashboard
        # serves the state API that Ray Train's placement-group cleaner polls.
        connect_ray("local", num_cpus=max(4, os.cpu_count() or 1), dashboard=True)

    def stop_services(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if self.s3 is not None:
            self.s3.stop()

    # ------------------------------------------------------------------------------ stages
    def data(self) -> dict:
        from demo.example_data import (
            FASHION_MNIST_CLASSES,
            balanced_subset,
            load_fashion_mnist,
            to_rgb,
            write_image_folder,
        )

        o = self.options
        images, labels = load_fashion_mnist("train")
        index = balanced_subset(labels, o.train_per_class, seed=o.seed)
        train = write_image_folder(
            to_rgb(images[index], o.image_size), labels[index], self.out / "images" / "train"
        )
        test_images, test_labels = load_fashion_mnist("test")
        held = balanced_subset(test_labels, o.heldout_per_class, seed=o.seed)
        heldout = write_image_folder(
            to_rgb(test_images[held], o.image_size), test_labels[held], self.out / "images" / "heldout"
        )
        if self.remote:
            from storage.filesystem import url_to_fs

            fs, remote_train = url_to_fs(self.location("images/train"))
            fs.put(f"{train}/", remote_train + "/", recursive=True)
        return {
            "train_images": len(index),
            "heldout_images": len(held),
            "classes": list(FASHION_MNIST_CLASSES),
            "train_folder": self.location("images/train"),
            "heldout_folder": str(heldout),
        }

    def classifier(self) -> dict:
        from demo.example_data import load_fashion_mnist, to_rgb
        from evaluation.classifier import classifier_accuracy, save_classifier, train_classifier

        images, labels = load_fashion_mnist("train")
        model = train_classifier(
            to_rgb(images, self.options.image_size), labels, epochs=self.options.classifier_epochs, seed=0
        )
        test_images, test_labels = load_fashion_mnist("test")
        accuracy = classifier_accuracy(model, to_rgb(test_images, self.options.image_size), test_labels)
        path = save_classifier(model, self.out / "classifier")
        return {"test_accuracy": round(accuracy, 4), "path": str(path)}

    def tokenizer(self) -> dict:
        from pipeline.image_dataset import ImageFolderDataset
        from tokenizer.families import tokenizer_preset
        from tokenizer.train import TokenizerTrainingConfig, train_tokenizer

        o = self.options
        config = TokenizerTrainingConfig(
            vqgan=tokenizer_preset(o.tokenizer_preset),
            steps=o.vqgan_steps,
            batch_size=o.vqgan_batch_size,
            lr=o.vqgan_lr,
            perceptual=o.vqgan_perceptual,
            disc_start=o.vqgan_steps + 1,  # no GAN phase at this scale: a few minutes of L1 + VQ training
            dead_code_restart=50,
            seed=o.seed,
            log_every=100,
            checkpoint_every=max(o.vqgan_steps // 2, 1),
        )
        dataset = ImageFolderDataset(self.out / "images" / "train", o.image_size, random_crop=False)
        summary = train_tokenizer(config, dataset, self.out / "tokenizer", resume=True)
        return {
            "path": str(summary.model_dir),
            "psnr": round(summary.final.psnr, 2),
            "mse": round(summary.final.mse, 5),
            "codebook_used": round(summary.final.codebook_fraction_used, 3),
            "reconstructions_png": str(summary.grid_path),
        }

    def tokenize(self, vqgan: str, train_folder: str) -> dict:
        from jobs.tokenize import TokenizeOptions, run_tokenize

        o = self.options
        summary = run_tokenize(
            TokenizeOptions(
                input=train_folder,
                output=self.location("store"),
                tokenizer=vqgan,
                resolution=o.image_size,
                flip=True,
                shard_size=1000,
                batch_size=250,
                actors=1,
            )
        )
        return {
            "store": summary.output,
            "images": summary.images,
            "rejects": summary.rejects,
            "shards": summary.shards,
            "images_per_s": round(summary.images_per_s, 1),
            "bytes": summary.bytes,
        }

    def train(self, store: str, vqgan: str) -> dict:
        from jobs.train.config import TrainJobConfig
        from jobs.train.deepspeed_config import OptimizerSettings
        from jobs.train.driver import run_training
        from tokenizer import load_tokenizer

        o = self.options
        vq = load_tokenizer(vqgan).config
        overrides = {
            "codebook_size": vq.codebook_size,
            "grid_size": o.image_size // vq.downsample_factor,
            "num_classes": 10,
            "dropout": o.transformer_dropout,
        }
        if o.transformer_depth is not None:
            overrides["depth"] = o.transformer_depth
        config = TrainJobConfig(
            store=store,
            out=self.location("run"),
            preset=o.model_preset,
            model_overrides=overrides,
            num_workers=o.workers,
            zero_stage=o.zero_stage,
            precision=o.precision,
            global_batch_size=o.global_batch_size,
            micro_batch_size=o.global_batch_size // o.workers,
            steps=o.train_steps,
            optimizer=OptimizerSettings(
                lr=o.lr, warmup_steps=min(100, o.train_steps // 10), schedule="cosine", min_lr_ratio=0.1
            ),
            checkpoint_every=max(o.train_steps // 4, 1),
            log_every=max(o.train_steps // 100, 1),
            sample_every=max(o.train_steps // 4, 1),
            tokenizer=vqgan,
            sampling=o.sampling,
            seed=o.seed,
            cpus_per_worker=1.0,
        )
        summary = run_training(config)
        model_dir = summary.export_dir
        if self.remote:  # the later stages read the weights locally
            from storage.filesystem import url_to_fs

            fs, remote_model = url_to_fs(model_dir)
            fs.get(remote_model + "/", str(self.out / "model") + "/", recursive=True)
            model_dir = str(self.out / "model")
        return {
            "transformer": model_dir,
            "run_dir": summary.run_dir,
            "checkpoints": summary.checkpoint_dir,
            "loss_curve_png": f"{summary.run_dir}/loss_curve.png",
        }

    def sample(self, transformer: str, vqgan: str) -> dict:
        from jobs.sample import SampleOptions, run_sample

        png = self.out / "samples.png"
        run_sample(
            SampleOptions(
                transformer=transformer, tokenizer=vqgan, out=str(png),
                per_class=self.options.samples_per_class, seed=self.options.seed,
            )
        )  # fmt: skip
        return {
            "grid_png": str(png),
            "layout": f"10 classes (rows) x {self.options.samples_per_class} samples",
        }

    def fid_stats(self, heldout_folder: str) -> dict:
        from jobs.evaluate.fid_stats import FidStatsOptions, run_fid_stats

        path = self.out / "heldout_stats_efflite0.npz"
        stats = run_fid_stats(
            FidStatsOptions(source=heldout_folder, out=str(path), resolution=self.options.image_size)
        )
        return {"path": str(path), "images": stats.count, "evaluator": stats.evaluator}

    def evaluate(self, transformer: str, vqgan: str, stats: str, classifier: str) -> dict:
        from jobs.evaluate.job import EvaluateOptions, run_evaluate

        record = run_evaluate(
            EvaluateOptions(
                transformer=transformer,
                tokenizer=vqgan,
                output=str(self.out / "evaluation"),
                reference_stats=stats,
                per_class=self.options.eval_per_class,
                shard_size=100,
                seed=self.options.seed,
                classifier=classifier,
                workers=2,
                num_cpus_per_worker=0.5,
                threads_per_worker=1,
            )
        )
        return {
            "report": record["report"],
            "metrics": record["labelled_metrics"],
            **record["extra"],
            "grid_png": str(self.out / "evaluation" / "samples.png"),
        }

    def ablation(self, transformer: str, vqgan: str, stats: str, classifier: str) -> dict:
        from jobs.quickstart.ablation import default_settings

        per_class = self.options.ablation_per_class
        models = (transformer, vqgan, stats, classifier)
        return self._sampling_table("ablation", default_settings, *models, per_class)

    def sampler_comparison(self, transformer: str, vqgan: str, stats: str, classifier: str) -> dict:
        from jobs.quickstart.ablation import comparison_settings

        return self._sampling_table(
            "sampler_comparison", comparison_settings, transformer, vqgan, stats, classifier,
            self.options.compare_per_class,
        )  # fmt: skip

    def _sampling_table(self, name, settings, transformer, vqgan, stats, classifier, per_class) -> dict:
        """Sample each setting with the same seeds, score it, write `<name>.md` and `<name>.json`."""
        from evaluation.classifier import load_classifier
        from evaluation.features import build_feature_extractor
        from evaluation.stats import FeatureStatistics
        from generation import MaskGIT
        from jobs.quickstart.ablation import ablation_markdown, run_ablation

        evaluator = build_feature_extractor("efficientnet-lite0", device="cpu")
        pipe = MaskGIT.load(transformer, vqgan, device="cpu")
        rows = run_ablation(
            pipe, load_classifier(classifier), evaluator, FeatureStatistics.load(stats),
            settings(pipe.sampling_defaults), classes=list(range(10)), per_class=per_class,
            seed=self.options.seed,
        )  # fmt: skip
        table = ablation_markdown(rows, evaluator.info.fid_label, per_class, 10)
        (self.out / f"{name}.md").write_text(table + "\n")
        (self.out / f"{name}.json").write_text(json.dumps([r._asdict() for r in rows], indent=1))
        print(table)
        return {"table": str(self.out / f"{name}.md"), "rows": [r._asdict() for r in rows]}

    def serve(self, transformer: str, vqgan: str) -> dict:
        import base64
        import urllib.request

        from jobs.serve.app import start_server, stop_server
        from jobs.serve.schema import ServeOptions

        url = start_server(ServeOptions(transformer=transformer, tokenizer=vqgan, port=_free_port()))
        body = json.dumps({"class_id": 7, "count": 4, "seed": 0}).encode()
        request = urllib.request.Request(
            f"{url.rstrip('/')}/v1/generate", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            answer = json.loads(response.read())
        png = self.out / "served.png"
        png.write_bytes(base64.b64decode(answer["images"][0]["png"]))
        stop_server(shutdown_ray=False)
        return {"url": url, "images": len(answer["images"]), "first_png": str(png)}

    # ------------------------------------------------------------------------------ all of it
    def run(self) -> dict:
        results: dict[str, dict] = {}
        self.plan = [*STAGES, *(["sampler_comparison"] if self.options.compare_samplers else [])]
        self.start_services()
        try:
            results["data"] = self.stage("data", self.data)
            results["classifier"] = self.stage("classifier", self.classifier)
            results["tokenizer"] = self.stage("tokenizer", self.tokenizer)
            vqgan = results["tokenizer"]["path"]
            results["tokenize"] = self.stage(
                "tokenize", lambda: self.tokenize(vqgan, results["data"]["train_folder"])
            )
            results["train"] = self.stage("train", lambda: self.train(results["tokenize"]["store"], vqgan))
            transformer = results["train"]["transformer"]
            results["sample"] = self.stage("sample", lambda: self.sample(transformer, vqgan))
            results["fid_stats"] = self.stage(
                "fid_stats", lambda: self.fid_stats(results["data"]["heldout_folder"])
            )
            stats, classifier = results["fid_stats"]["path"], results["classifier"]["path"]
            results["evaluate"] = self.stage(
                "evaluate", lambda: self.evaluate(transformer, vqgan, stats, classifier)
            )
            results["ablation"] = self.stage(
                "ablation", lambda: self.ablation(transformer, vqgan, stats, classifier)
            )
            if self.options.compare_samplers:
                compare = self.sampler_comparison
                results["sampler_comparison"] = self.stage(
                    "sampler_comparison", lambda: compare(transformer, vqgan, stats, classifier)
                )
            if self.options.serve:
                results["serve"] = self.serve(transformer, vqgan)
        finally:
            self.stop_services()
        (self.out / "summary.json").write_text(json.dumps(results, indent=1))
        print(f"\nAll stages done. Summary: {self.out / 'summary.json'}")
        return results


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _describe(record: dict) -> str:
    """One line of a stage record: its paths and headline numbers."""
    shown = {k: v for k, v in record.items() if not isinstance(v, (dict, list)) and k != "seconds"}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `quickstart` subcommand; every flag's dest is a `QuickstartOptions` field."""
    d = QuickstartOptions()
    parser = subparsers.add_parser(
        "quickstart",
        help="run the whole pipeline end to end on Fashion-MNIST (local Ray, local disk or S3)",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--out", default=d.out, help="output folder (a rerun reuses its finished stages)")
    add("--family", default=d.family, choices=sorted(FAMILIES),
        help="v1: VQGAN + MaskTransformer (confidence sampler); v2: LlamaGen VQ + Halton transformer "
        "(Halton sampler)")  # fmt: skip
    add("--s3", action="store_true", help="store and training run on a local S3 server")
    add("--serve", action="store_true", help="also start the Serve app and make one request")
    add("--image-size", type=int, default=d.image_size, help="image side in pixels")
    add("--train-per-class", type=int, default=d.train_per_class, help="training images per class")
    add("--heldout-per-class", type=int, default=d.heldout_per_class, help="held-out test images per class")
    add("--classifier-epochs", type=int, default=d.classifier_epochs, help="epochs of the judging classifier")
    add("--vqgan-preset", default=d.vqgan_preset, help="tokenizer preset (default: the family's)")
    add("--vqgan-steps", type=int, default=d.vqgan_steps, help="VQGAN training steps")
    add("--vqgan-batch-size", type=int, default=d.vqgan_batch_size, help="VQGAN images per step")
    add("--vqgan-lr", type=float, default=d.vqgan_lr, help="VQGAN learning rate")
    add("--vqgan-perceptual", default=d.vqgan_perceptual, help="VQGAN perceptual loss")
    add("--transformer-preset", default=d.transformer_preset, help="transformer preset (default: family's)")
    add("--transformer-depth", type=int, default=d.transformer_depth, help="override the preset's depth")
    add("--transformer-dropout", type=float, default=d.transformer_dropout, help="transformer dropout")
    add("--train-steps", type=int, default=d.train_steps, help="transformer optimizer steps")
    add("--global-batch-size", type=int, default=d.global_batch_size, help="samples per optimizer step")
    add("--workers", type=int, default=d.workers, help="Ray Train workers")
    add("--zero-stage", type=int, default=d.zero_stage, help="DeepSpeed ZeRO stage")
    add("--precision", default=d.precision, help="fp32 or bf16")
    add("--lr", type=float, default=d.lr, help="transformer peak learning rate")
    add("--samples-per-class", type=int, default=d.samples_per_class, help="samples per class in samples.png")
    add("--eval-per-class", type=int, default=d.eval_per_class, help="samples per class for evaluation")
    add("--ablation-per-class", type=int, default=d.ablation_per_class, help="samples per class per row")
    add("--compare-samplers", action="store_true",
        help="also compare the Halton and confidence orders at 4, 8, 16 and 32 steps (sampler_comparison.md)")
    add("--compare-per-class", type=int, default=d.compare_per_class, help="samples per class and row")
    add("--seed", type=int, default=d.seed, help="seed of data subsets and sampling")  # fmt: skip
    parser.set_defaults(run=_run)


def run_quickstart(options: QuickstartOptions) -> dict:
    """Run every stage (reusing finished ones); returns each stage's record, as in summary.json."""
    return Quickstart(options).run()


def _run(args: argparse.Namespace) -> int:
    run_quickstart(options_from_args(QuickstartOptions, args))
    return 0
