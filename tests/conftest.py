"""Shared fixtures. `make test` runs the suite twice, selecting by marker: `-m "not ml"` in the
Airflow environment (Airflow, DVC, data stages), `-m ml` in the ML environment (TensorFlow,
TensorFlow Transform, MLflow). Test modules import only what both environments have at the
top, and the heavy libraries inside the tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mmsearch.tools.sample_data import generate
from tests.helpers import SMALL


@pytest.fixture(scope="session")
def small_raw(tmp_path_factory) -> Path:
    """A small raw directory (16-dim embeddings), generated once; copy it before damaging it."""
    out = tmp_path_factory.mktemp("raw") / "raw"
    generate(out, SMALL, legacy_csv=True)
    return out


@pytest.fixture
def raw_copy(small_raw, tmp_path) -> Path:
    target = tmp_path / "raw"
    shutil.copytree(small_raw, target)
    return target
