from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench.protocols  # noqa: E402,F401
import datasets  # noqa: E402,F401
import methods  # noqa: E402,F401


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long end-to-end test; run with --runslow")
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped without it")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated-data cache for the whole test session (never the user's ./data)."""
    d = tmp_path_factory.mktemp("data")
    os.environ["SSLBENCH_DATA"] = str(d)
    return d


@pytest.fixture
def views_batch():
    """``views_batch(method, size=64, n=2)``: a 2D method's views of ``n`` random images, collated as the loader
    collates them."""
    import numpy as np
    import torch

    def make(method, size: int = 64, n: int = 2) -> dict:
        rng = np.random.default_rng(0)
        views = [
            method.views({"image": rng.random((1, size, size), dtype=np.float32), "roi": (size, size)}, rng)
            for _ in range(n)
        ]
        return torch.utils.data.default_collate(views)

    return make
