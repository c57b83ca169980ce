"""pipeline.image_dataset: the image-folder Dataset the tokenizer trainer reads (real Fashion-MNIST files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from demo.example_data import FASHION_MNIST_CLASSES, write_image_folder
from pipeline.image_dataset import ImageFolderDataset, list_image_folder, resize_short_side_random_crop
from pipeline.images import center_crop_resize, decode_image, to_model_input


@pytest.fixture
def folder(tmp_path, fashion_mnist_small):
    images, labels = fashion_mnist_small
    return write_image_folder(images[:30], labels[:30], tmp_path / "data")


def test_items_are_labelled_images_in_range(folder, fashion_mnist_small):
    images, labels = fashion_mnist_small
    dataset = ImageFolderDataset(folder, 32, random_crop=False, horizontal_flip=False)
    assert len(dataset) == 30
    present = sorted(set(labels[:30].tolist()))
    assert dataset.classes == [f"{c:02d}-{FASHION_MNIST_CLASSES[c]}" for c in present]
    for index in range(len(dataset)):
        image, label = dataset[index]
        path, _ = dataset.samples[index]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert float(image.min()) >= -1 and float(image.max()) <= 1
        assert dataset.classes[label] == path.parent.name
        original = images[int(path.stem)]  # write_image_folder names files by their index
        assert torch.equal(image, to_model_input(original[None])[0])  # PNG is lossless


def test_eval_transform_is_the_reference_center_crop(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    pixels = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a" / "wide.png")
    dataset = ImageFolderDataset(tmp_path, 32, random_crop=False, horizontal_flip=False)
    expected = to_model_input(np.array(center_crop_resize(pixels, 32))[None])[0]
    assert torch.equal(dataset[0][0], expected)


def test_random_crop_and_flip(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    pixels = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)  # short side already 32: crops are windows
    Image.fromarray(pixels).save(tmp_path / "a" / "wide.png")
    torch.manual_seed(0)
    dataset = ImageFolderDataset(tmp_path, 32, random_crop=True, horizontal_flip=True)
    windows = {
        left: to_model_input(np.ascontiguousarray(pixels[:, left : left + 32])[None])[0] for left in range(33)
    }
    seen_left, flips = set(), 0
    for _ in range(40):
        image, _ = dataset[0]
        matches = [left for left, w in windows.items() if torch.equal(image, w)]
        flipped = [left for left, w in windows.items() if torch.equal(image, w.flip(-1))]
        assert len(matches + flipped) >= 1
        seen_left.update(matches + flipped)
        flips += bool(flipped) and not matches
    assert len(seen_left) > 5 and 5 < flips < 35

    crop = resize_short_side_random_crop(pixels, 16, generator=torch.Generator().manual_seed(1))
    assert crop.shape == (16, 16, 3)


def test_batches_through_a_dataloader(folder):
    loader = DataLoader(ImageFolderDataset(folder, 32), batch_size=8, shuffle=True)
    images, labels = next(iter(loader))
    assert images.shape == (8, 3, 32, 32) and labels.shape == (8,) and labels.dtype == torch.int64


def test_unreadable_files_are_skipped_and_reported(folder):
    victim = sorted(folder.rglob("*.png"))[0]
    victim.write_bytes(b"this is not a png")
    dataset = ImageFolderDataset(folder, 32, random_crop=False, horizontal_flip=False)
    index = [path for path, _ in dataset.samples].index(victim)
    image, _ = dataset[index]
    following = decode_image(dataset.samples[index + 1][0].read_bytes())
    assert torch.equal(image, to_model_input(following[None])[0])
    assert dataset.rejected == [str(victim)]


def test_bad_folders_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolderDataset(tmp_path / "missing", 32)
    with pytest.raises(ValueError, match="no class sub-folders"):
        list_image_folder(tmp_path)
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path, 32)
    Image.new("RGB", (8, 8)).save(tmp_path / "cats" / "a.png")
    with pytest.raises(ValueError, match="image_size"):
        ImageFolderDataset(tmp_path, 0)
