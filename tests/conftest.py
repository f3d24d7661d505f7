import os

import numpy as np
import pytest
import torch

os.environ.setdefault("NUMBA_NUM_THREADS", "2")
torch.set_num_threads(1)


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorm layers non-trivial statistics so tests exercise real float paths."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) * 2 - 1)
            m.bias.data.copy_(torch.rand(c, generator=g) * 2 - 1)
    return model.eval()


def randomize_float_parts(model: torch.nn.Module, seed: int) -> None:
    """Random BatchNorm statistics (randomize_batchnorm) and PReLU slopes."""
    randomize_batchnorm(model, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.PReLU):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
