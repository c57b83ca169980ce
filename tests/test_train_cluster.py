"""`ray job submit -- maskgit train` against a real `ray start --head` on 127.0.0.1, S3 end to end.

In its own module: while the head runs, no embedded Ray of another test may run beside it.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.deepspeed, pytest.mark.s3, pytest.mark.slow]


def test_ray_job_submit_trains_from_s3_to_s3_on_a_running_cluster(
    ray_head, s3_server, fashion_token_store, tmp_path
):
    """`ray job submit -- maskgit train` against a real `ray start --head`; store, tokenizer, checkpoints,
    sample grids and export all on the S3 server, credentials only in the cluster's AWS environment.
    The tokenizer URL is read by the driver (checks) and by each worker (grids), never copied by hand."""
    import fsspec

    from transformer.checkpoint import load_transformer

    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    store_url = s3_server.url("train-job", "store")
    fs.put(fashion_token_store["url"] + "/", store_url[len("s3://") :], recursive=True)
    tokenizer_url = s3_server.url("train-job", "tokenizer")
    fs.put(fashion_token_store["vqgan"] + "/", tokenizer_url[len("s3://") :], recursive=True)
    run_url = s3_server.url("train-job", "run")
    command = [
        "maskgit", "train", "--store", store_url, "--out", run_url, "--preset", "tiny",
        "--codebook-size", str(fashion_token_store["codebook_size"]),
        "--grid-size", str(fashion_token_store["grid_size"]),
        "--num-classes", str(fashion_token_store["num_classes"]),
        "--depth", "2", "--workers", "2", "--global-batch-size", "32", "--micro-batch-size", "16",
        "--steps", "6", "--checkpoint-every", "3", "--log-every", "2", "--sample-steps", "4",
        "--tokenizer", tokenizer_url, "--sample-every", "3",
    ]  # fmt: skip
    result = ray_head.submit(command)  # the client holds no AWS credentials; the cluster does
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert s3_server.secret_key not in result.stdout + result.stderr

    assert fs.exists(f"{run_url}/checkpoints/latest.json"[len("s3://") :])
    assert fs.exists(f"{run_url}/metrics.jsonl"[len("s3://") :])
    grids = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{run_url}/**/step-*.png"[len("s3://") :]))
    assert grids == ["step-00000003.png", "step-00000006.png"], grids
    local_export = tmp_path / "export"
    fs.get(f"{run_url}/export/"[len("s3://") :], str(local_export) + "/", recursive=True)
    model = load_transformer(local_export)
    assert model.config.codebook_size == fashion_token_store["codebook_size"]
