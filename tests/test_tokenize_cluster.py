"""`ray job submit -- maskgit tokenize ...` against a real `ray start --head` cluster on 127.0.0.1.

S3 credentials reach the job only through the standard AWS environment of the cluster's processes
(never through the command line or the job's runtime env), and must not appear in the job's output.
The cluster is the `ray_head` fixture of tests/conftest.py, stopped by its own processes, never with
`ray stop` (which would kill every Ray of the user on a shared machine).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from demo.example_inputs import write_webdataset_shards
from pipeline.images import to_model_input
from pipeline.store import open_token_store

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.slow]
BIN = Path(sys.executable).parent


def test_ray_job_submit_tokenizes_s3_tars_into_an_s3_store(
    ray_head, s3_server, fashion_mnist_small, tmp_path
):
    from tokenizer.checkpoint import save_vqgan
    from tokenizer.config import PRESETS
    from tokenizer.vqgan import VQGAN

    torch.manual_seed(0)
    model = VQGAN(PRESETS["tiny-f4"]).eval()
    tokenizer = save_vqgan(model, tmp_path / "vqgan")
    images, labels = fashion_mnist_small
    images, labels = images[:48], labels[:48]
    inputs, output = s3_server.url("cluster-job/tars"), s3_server.url("cluster-job/store")
    write_webdataset_shards(images, labels, inputs, per_shard=16, storage_options=s3_server.storage_options)
    entrypoint = [
        "maskgit",
        "tokenize",
        "--input",
        inputs,
        "--output",
        output,
        "--tokenizer",
        str(tokenizer),
        "--resolution",
        "32",
        "--format",
        "zarr",
        "--flip",
        "--no-progress",
    ]
    result = ray_head.submit(entrypoint, timeout_s=400)  # the client holds no AWS credentials
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-4000:]
    assert "token store s3://" in text and "48 images in 3 shards" in text
    assert s3_server.secret_key not in text
    store = open_token_store(output, s3_server.storage_options)
    shards = [store.read_shard(i) for i in range(store.num_shards)]
    tokens = np.concatenate([s.tokens for s in shards])
    assert [i for s in shards for i in s.image_ids] == [f"shard-{k // 16:06d}.tar/{k:06d}" for k in range(48)]
    np.testing.assert_array_equal(np.concatenate([s.labels for s in shards]), labels)
    with torch.no_grad():
        direct = model.encode_to_indices(to_model_input(images)).numpy()
    np.testing.assert_array_equal(tokens[:, 0], direct)
    assert store.manifest.class_names == tuple(str(i) for i in range(int(labels.max()) + 1))
