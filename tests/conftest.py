"""Shared fixtures: seeded tiny synthetic datasets with known answers. No test touches the network."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A 12-image generated demo set (VOC layout, 64x80), made once per session. Treat as read-only."""
    from wsss.datasets import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo") / "data", 12, size=(64, 80), seed=3)


@pytest.fixture
def demo_copy(demo_root, tmp_path) -> Path:
    """A private copy of the demo set that a test may damage."""
    import shutil

    dst = tmp_path / "data"
    shutil.copytree(demo_root, dst)
    return dst


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def voc_dev() -> Path:
    """../shared/data/voc-dev, or skip the test when it is absent."""
    path = SHARED_DATA / "voc-dev"
    if not (path / "JPEGImages").is_dir():
        pytest.skip("../shared/data/voc-dev not present")
    return path


def assert_trains_one_step(model, num_classes: int = 3) -> None:
    """Forward + backward of ``model`` on (2, 3, 64, 64): logits at input size, every parameter gets a finite
    gradient and some are non-zero (255 labels ignored)."""
    import torch
    import torch.nn.functional as F

    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, num_classes, 64, 64)
    target = torch.randint(0, num_classes, (2, 64, 64))
    target[:, :4] = 255
    F.cross_entropy(out, target, ignore_index=255).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "every parameter takes part in the forward pass"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
