"""The Fashion-MNIST classifier that checks samples show their class: accuracy, inputs, save/load."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from demo.example_data import balanced_subset, load_fashion_mnist, to_rgb
from evaluation.classifier import (
    PRESETS,
    Classifier,
    classifier_accuracy,
    load_classifier,
    save_classifier,
    train_classifier,
)


@pytest.fixture(scope="module")
def test_split():
    images, labels = load_fashion_mnist("test")
    return to_rgb(images, size=32), labels  # (10000, 32, 32, 3)


@pytest.fixture(scope="module")
def quick_classifier(fashion_mnist):
    images, labels = fashion_mnist
    index = balanced_subset(labels, per_class=300, seed=0)
    return train_classifier(to_rgb(images[index], size=32), labels[index], epochs=3, progress=False)


def test_a_quickly_trained_classifier_recognises_real_test_images(quick_classifier, test_split):
    images, labels = test_split
    accuracy = classifier_accuracy(quick_classifier, images[:2000], labels[:2000])
    assert accuracy > 0.75, accuracy  # 3000 images, 3 epochs; chance is 0.10
    shuffled = classifier_accuracy(
        quick_classifier, images[:2000], np.random.default_rng(0).permutation(labels[:2000])
    )
    assert shuffled < 0.2


def test_inputs_uint8_grey_rgb_and_float_agree(quick_classifier, test_split):
    images = test_split[0][:64]
    expected = quick_classifier.predict(images)
    np.testing.assert_array_equal(quick_classifier.predict(images[..., 0]), expected)  # greyscale (N, H, W)
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # decoder range [-1, 1]
    np.testing.assert_array_equal(quick_classifier.predict(as_float), expected)
    grey28 = load_fashion_mnist("test")[0][:64]  # other sizes are resized
    assert (quick_classifier.predict(grey28) == expected).mean() > 0.9
    with pytest.raises(ValueError, match="uint8"):
        quick_classifier.predict(images.astype(np.float32))


def test_save_and_load_round_trip(quick_classifier, test_split, tmp_path):
    folder = save_classifier(quick_classifier, tmp_path / "clf")
    assert json.loads((folder / "config.json").read_text())["widths"] == list(quick_classifier.config.widths)
    loaded = load_classifier(folder)
    assert isinstance(loaded, Classifier) and loaded.config == quick_classifier.config
    images = test_split[0][:200]
    np.testing.assert_array_equal(loaded.predict_logits(images), quick_classifier.predict_logits(images))
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing"):
        load_classifier(folder)


def test_training_is_seeded(fashion_mnist):
    images, labels = fashion_mnist
    index = balanced_subset(labels, per_class=20, seed=1)
    rgb = to_rgb(images[index], size=32)
    config = dataclasses.replace(PRESETS["tiny"])
    first = train_classifier(rgb, labels[index], config=config, epochs=1, seed=3, progress=False)
    second = train_classifier(rgb, labels[index], config=config, epochs=1, seed=3, progress=False)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="labels"):
        train_classifier(rgb, labels[index] + 10, config=config, epochs=1, progress=False)


@pytest.mark.slow
def test_full_training_reaches_the_quickstart_accuracy(fashion_mnist, test_split):
    """The claim the quickstart relies on: >= 89 % Fashion-MNIST test accuracy at 32x32 RGB, trained
    as the quickstart trains its judge (all 60k training images, its number of epochs, seed 0)."""
    from jobs.quickstart.command import QuickstartOptions

    images, labels = fashion_mnist
    epochs = QuickstartOptions().classifier_epochs
    classifier = train_classifier(to_rgb(images, size=32), labels, epochs=epochs, seed=0, progress=False)
    assert classifier_accuracy(classifier, *test_split) >= 0.89
