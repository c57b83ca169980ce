"""End to end on real data: a tiny MaskGIT trained for a minute on Fashion-MNIST tokens samples images
whose class a classifier trained on the real images recognises far above chance.

Pipeline: a tiny VQGAN (tokenizer.train, L1 + VQ losses only) trained briefly on 1000 real 32×32 images
-> 8×8 token grids of 3000 images -> the "tiny" transformer preset trained with the reference objective
-> `sample()` with classifier-free guidance -> VQGAN decoder -> `evaluation.classifier`.
The sample grid is written as a PNG next to the test's temporary files.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from demo.example_data import balanced_subset, load_fashion_mnist, to_rgb
from evaluation.classifier import train_classifier
from pipeline.images import encode_png, image_grid, to_model_input, to_uint8_images
from tokenizer import load_vqgan
from tokenizer.config import preset
from tokenizer.train import TokenizerTrainingConfig, train_tokenizer
from transformer import PRESETS, MaskTransformer, masked_token_loss, sample

TOKENIZER_STEPS = 300
TRANSFORMER_STEPS = 600


def train_tiny_tokenizer(images: np.ndarray, out_dir) -> torch.nn.Module:
    config = TokenizerTrainingConfig(
        vqgan=preset("tiny-f4"),  # 32 px -> 8×8 tokens, 256 codes
        steps=TOKENIZER_STEPS,
        batch_size=16,
        lr=1e-3,
        perceptual="none",
        disc_start=TOKENIZER_STEPS + 1,  # no GAN phase: a minute of training
        dead_code_restart=50,
        log_every=100,
        checkpoint_every=TOKENIZER_STEPS,
        seed=0,
    )
    dataset = torch.utils.data.TensorDataset(to_model_input(images))
    train_tokenizer(config, dataset, out_dir, progress=False)
    return load_vqgan(out_dir / "vqgan")


def train_tiny_transformer(codes: torch.Tensor, labels: torch.Tensor, codebook_size: int) -> MaskTransformer:
    config = dataclasses.replace(PRESETS["tiny"], codebook_size=codebook_size, dropout=0.0)
    torch.manual_seed(0)
    model = MaskTransformer(config)
    # The reference recipe (AdamW β2 0.96, loss on all tokens, label smoothing 0.1, label drop 0.1,
    # arccos Bernoulli masks, grad clip 1), with a learning rate for a 600-step run.
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.96), weight_decay=1e-5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(TRANSFORMER_STEPS):
        batch = torch.randint(0, len(codes), (32,), generator=generator)
        loss = masked_token_loss(model, codes[batch], labels[batch], generator=generator).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return model.eval()


@pytest.mark.slow
def test_samples_show_their_class(fashion_mnist, tmp_path):
    images, labels = fashion_mnist
    tokenizer_subset = balanced_subset(labels, per_class=100, seed=0)
    vqgan = train_tiny_tokenizer(to_rgb(images[tokenizer_subset], size=32), tmp_path / "tokenizer")

    token_subset = balanced_subset(labels, per_class=300, seed=0)
    with torch.no_grad():
        pixels = to_model_input(to_rgb(images[token_subset], size=32))
        codes = torch.cat([vqgan.encode_to_indices(pixels[i : i + 500]) for i in range(0, len(pixels), 500)])
    token_labels = torch.from_numpy(labels[token_subset]).long()
    model = train_tiny_transformer(codes, token_labels, vqgan.config.codebook_size)

    classifier_subset = balanced_subset(labels, per_class=600, seed=1)
    classifier = train_classifier(
        to_rgb(images[classifier_subset], size=32), labels[classifier_subset], epochs=2, progress=False
    )
    test_images, test_labels = load_fashion_mnist("test")
    real_accuracy = float(
        (classifier.predict(to_rgb(test_images[:1000], size=32)) == test_labels[:1000]).mean()
    )
    assert real_accuracy > 0.75, "the classifier must recognise real images for the check to mean anything"

    class_ids = torch.arange(10).repeat_interleave(10)
    tokens = sample(model, class_ids, steps=8, cfg_weight=3.0, seeds=range(len(class_ids))).tokens
    with torch.no_grad():
        generated = to_uint8_images(vqgan.decode_from_indices(tokens))
    (tmp_path / "samples.png").write_bytes(encode_png(image_grid(generated, columns=10)))
    accuracy = float((classifier.predict(generated) == class_ids.numpy()).mean())
    print(f"samples showing their class: {accuracy:.0%} (real test images: {real_accuracy:.0%})")
    assert accuracy > 0.5, (
        f"only {accuracy:.0%} of samples show their class (chance 10%); see {tmp_path / 'samples.png'}"
    )
