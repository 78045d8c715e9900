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
