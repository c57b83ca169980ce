"""DeepSpeed's accelerator follows the hardware: the selection logic, checked without a GPU.

A forced `DS_ACCELERATOR=cpu` on a GPU machine builds a CPU engine that is then fed CUDA tensors; these
cases are what would catch that regression on a CPU-only CI.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from jobs.train.deepspeed_config import ACCELERATOR_VARIABLE, accelerator_for, select_accelerator


@pytest.mark.parametrize(
    ("use_gpu", "cuda_available", "requested", "expected"),
    [
        (None, True, None, "cuda"),  # the hardware decides
        (None, False, None, "cpu"),
        (True, True, None, "cuda"),  # the job's own choice
        (False, True, None, "cpu"),  # a CPU job on a GPU machine
        (None, True, "cpu", "cpu"),  # the user asked for the CPU
        (True, True, "cuda", "cuda"),
        (False, False, "cpu", "cpu"),
    ],
)
def test_accelerator_for(use_gpu, cuda_available, requested, expected):
    assert accelerator_for(use_gpu=use_gpu, cuda_available=cuda_available, requested=requested) == expected


def test_a_contradicting_request_is_an_error_naming_the_variable():
    with pytest.raises(ValueError, match=f"{ACCELERATOR_VARIABLE}='cpu' contradicts .*use_gpu=True"):
        accelerator_for(use_gpu=True, cuda_available=True, requested="cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        accelerator_for(use_gpu=True, cuda_available=False, requested=None)


def test_select_accelerator_in_a_fresh_process_follows_this_machine():
    """Nothing sets DS_ACCELERATOR before it (the test suite's conftest no longer forces the CPU)."""
    env = {key: value for key, value in os.environ.items() if key != ACCELERATOR_VARIABLE}
    code = (
        "import os; from jobs.train.deepspeed_config import select_accelerator; "
        "print(select_accelerator(), os.environ['DS_ACCELERATOR'])"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert result.stdout.split() == [expected, expected]
    # and this process, set up by conftest, agrees with the hardware too
    assert os.environ[ACCELERATOR_VARIABLE] == expected
    assert select_accelerator() == expected
