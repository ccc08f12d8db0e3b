"""Shared fixtures: every test that takes `device` runs on cpu, and on cuda when present."""

import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
