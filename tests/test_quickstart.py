"""A reduced `maskgit quickstart`: every stage on real Fashion-MNIST with tiny sizes, outputs checked.

The same code path as the README's first command (local Ray, local disk, Ray tokenization job,
DeepSpeed training on 2 workers, sampling, evaluation, ablation, Serve), only smaller. A second run
must reuse every finished stage.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from jobs.quickstart.command import STAGES, Quickstart, QuickstartOptions

pytestmark = [pytest.mark.ray, pytest.mark.deepspeed, pytest.mark.slow]


def test_reduced_quickstart_produces_every_output_and_reuses_finished_stages(tmp_path, capsys):
    from pipeline.store import open_token_store
    from tokenizer import load_vqgan
    from transformer.checkpoint import load_transformer

    options = QuickstartOptions(
        out=str(tmp_path / "qs"),
        serve=True,
        train_per_class=40,
        heldout_per_class=10,
        classifier_epochs=1,
        vqgan_steps=40,
        vqgan_batch_size=16,
        transformer_preset="tiny",
        transformer_depth=2,
        train_steps=20,
        global_batch_size=32,
        samples_per_class=2,
        eval_per_class=4,
        ablation_per_class=2,
    )
    results = Quickstart(options).run()
    out = tmp_path / "qs"

    assert set(STAGES) <= set(results) and "serve" in results
    for stage in STAGES:
        assert (out / "stages" / f"{stage}.json").is_file()

    assert results["data"]["train_images"] == 400 and results["data"]["heldout_images"] == 100
    assert 0.5 < results["classifier"]["test_accuracy"] <= 1.0

    vqgan = load_vqgan(results["tokenizer"]["path"])
    assert vqgan.config.downsample_factor == 4
    assert Image.open(results["tokenizer"]["reconstructions_png"]).size[0] > 32

    store = open_token_store(results["tokenize"]["store"])
    assert store.manifest.num_samples == 400 and store.manifest.views == ("original", "hflip")
    assert store.manifest.codebook_size == vqgan.config.codebook_size and store.manifest.grid == (8, 8)

    model = load_transformer(results["train"]["transformer"])
    assert model.config.depth == 2 and model.config.grid_size == 8
    assert (out / "run" / "loss_curve.png").is_file() and (out / "run" / "metrics.jsonl").is_file()
    assert list((out / "run" / "samples").glob("*.png"))

    grid = Image.open(results["sample"]["grid_png"])
    assert grid.size[0] > 2 * 32 and grid.size[1] > 10 * 32  # 10 class rows of 2 samples
    assert np.asarray(grid.convert("L")).std() > 5  # not a blank picture

    report = (out / "evaluation" / "report.md").read_text()
    assert "FID-EffLite0 (not comparable with published FID)" in report
    assert np.isfinite(results["evaluate"]["metrics"]["FID-EffLite0 (not comparable with published FID)"])

    ablation = (out / "ablation.md").read_text()
    for row in ("reference (arccos)", "cosine schedule", "linear schedule", "no Gumbel noise", "no CFG"):
        assert row in ablation
    rows = json.loads((out / "ablation.json").read_text())
    assert all(0.0 <= r["class_accuracy"] <= 1.0 and np.isfinite(r["fid"]) for r in rows)

    assert results["serve"]["images"] == 4
    assert Image.open(results["serve"]["first_png"]).size == (32, 32)
    assert (
        json.loads((out / "summary.json").read_text())["train"]["transformer"]
        == results["train"]["transformer"]
    )

    capsys.readouterr()
    again = Quickstart(dataclasses.replace(options, serve=False)).run()
    printed = capsys.readouterr().out
    for place, stage in enumerate(STAGES, start=1):  # each stage names its place in the run
        assert f"[{place}/{len(STAGES)} {stage}] reusing the finished stage" in printed
    assert again["train"] == results["train"]
