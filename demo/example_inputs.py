"""Write real images as each input kind `maskgit tokenize` reads, plus a catalogue of bad files.

For the quickstart, tests and benchmarks: the same images as an ImageNet-style folder tree
(`demo.example_data.write_image_folder`), as WebDataset tar shards (`<key>.png` + `<key>.cls`), or
as Parquet files (Hugging Face's `{"bytes", "path"}` image struct + `label` + `image_id`), at a local
path or an `s3://` URL. `write_bad_images` derives every kind of troublesome input from one real image:
those that can become RGB and those that must land in the rejects file.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

from pipeline.images import encode_png
from storage.filesystem import open_file

# name -> (file name, whether it must be kept as an RGB image). Reasons are in pipeline.images.
BAD_IMAGE_KINDS = {
    "truncated_jpeg": ("truncated.jpg", False),
    "random_bytes": ("random.jpg", False),
    "text_file": ("notes.txt", False),
    "empty_file": ("empty.png", False),
    "tiny_2x2": ("tiny.png", False),
    "decompression_bomb": ("bomb.png", False),
    "cmyk_jpeg": ("cmyk.jpg", True),
    "grey_l_png": ("grey.png", True),
    "grey_alpha_la_png": ("grey_alpha.png", True),
    "palette_transparency_png": ("palette.png", True),
    "rgba_png": ("rgba.png", True),
    "sixteen_bit_png": ("sixteen.png", True),
}


def _encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header declares width×height 8-bit grey pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def bad_image_bytes(image: np.ndarray, seed: int = 0) -> dict[str, bytes]:
    """Every kind in BAD_IMAGE_KINDS, built from one (H, W, 3) uint8 image: {kind: file bytes}."""
    rgb = Image.fromarray(image)
    grey = rgb.convert("L")
    alpha = Image.fromarray(
        np.linspace(0, 255, grey.size[0] * grey.size[1]).astype(np.uint8).reshape(grey.size)
    )
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    jpeg = _encode(rgb, "JPEG", quality=90)
    sixteen = Image.fromarray((np.asarray(grey, np.uint16) * 257).astype(np.uint16))
    rng = np.random.default_rng(seed)
    return {
        "truncated_jpeg": jpeg[: len(jpeg) // 2],
        "random_bytes": rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(),
        "text_file": b"This folder holds Fashion-MNIST images.\n",
        "empty_file": b"",
        "tiny_2x2": _encode(rgb.resize((2, 2)), "PNG"),
        "decompression_bomb": _png_declaring(30_000, 30_000),
        "cmyk_jpeg": _encode(rgb.convert("CMYK"), "JPEG", quality=95),
        "grey_l_png": _encode(grey, "PNG"),
        "grey_alpha_la_png": _encode(Image.merge("LA", (grey, alpha)), "PNG"),
        "palette_transparency_png": _encode(palette, "PNG", transparency=0),
        "rgba_png": _encode(Image.merge("RGBA", (*rgb.split(), alpha)), "PNG"),
        "sixteen_bit_png": _encode(sixteen, "PNG"),
    }


def _join(url: str, name: str) -> str:
    return f"{url.rstrip('/')}/{name}"


def write_webdataset_shards(
    images: np.ndarray,
    labels: np.ndarray,
    url: str,
    *,
    per_shard: int,
    storage_options: dict[str, Any] | None = None,
) -> list[str]:
    """Write (N, H, W, 3) uint8 images as tars `url/shard-000000.tar`, ... with `<key>.png` + `<key>.cls`.

    Returns:
        The tar URLs, in order.
    """
    import webdataset as wds

    urls = []
    for shard, start in enumerate(range(0, len(images), per_shard)):
        shard_url = _join(url, f"shard-{shard:06d}.tar")
        with open_file(shard_url, "wb", storage_options) as handle, wds.TarWriter(handle) as tar:
            for index in range(start, min(start + per_shard, len(images))):
                tar.write(
                    {
                        "__key__": f"{index:06d}",
                        "png": encode_png(images[index]),
                        "cls": str(int(labels[index])),
                    }
                )
        urls.append(shard_url)
    return urls


def write_parquet_files(
    images: np.ndarray,
    labels: np.ndarray,
    url: str,
    *,
    per_file: int,
    row_group_size: int = 64,
    storage_options: dict[str, Any] | None = None,
) -> list[str]:
    """Write images as Parquet files `url/part-000000.parquet`, ... with columns `image` ({bytes, path}),
    `label` (int64) and `image_id` (the Hugging Face datasets layout).

    Returns:
        The file URLs, in order.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    urls = []
    for part, start in enumerate(range(0, len(images), per_file)):
        stop = min(start + per_file, len(images))
        ids = [f"{index:06d}" for index in range(start, stop)]
        table = pa.table(
            {
                "image": [
                    {"bytes": encode_png(images[i]), "path": f"{ids[i - start]}.png"}
                    for i in range(start, stop)
                ],
                "label": pa.array(np.asarray(labels[start:stop], np.int64)),
                "image_id": ids,
            }
        )
        file_url = _join(url, f"part-{part:06d}.parquet")
        with open_file(file_url, "wb", storage_options) as handle:
            pq.write_table(table, handle, row_group_size=row_group_size)
        urls.append(file_url)
    return urls
