"""Each end-to-end module gets a stack of its own, so the modules run side by side."""

import pytest

from tests.e2e.support import make_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Airflow on SQLite, a DVC repository of the bundled sample's size, MLflow under its home."""
    return make_stack(tmp_path_factory.mktemp("e2e"))
