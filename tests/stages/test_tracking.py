"""The champion lookup: no model or no alias is "no champion"; an unreachable registry is an error,
never "no champion" (which would let the gate promote over a champion it could not see)."""

import socket

import pytest

from mmsearch import tracking
from mmsearch.config import RunConfig

pytestmark = pytest.mark.ml


@pytest.fixture
def tracking_uri():
    """Point MLflow at a URI for one test: set in-process (an earlier test in this process may have
    called set_tracking_uri, which wins over the environment variable), restored afterwards."""
    import mlflow

    before = mlflow.get_tracking_uri()
    yield mlflow.set_tracking_uri
    mlflow.set_tracking_uri(before)


def test_no_model_and_no_alias_mean_no_champion(tmp_path, tracking_uri):
    import mlflow

    tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = RunConfig(registered_model_name="lookup-test")
    assert tracking.champion(cfg) is None
    mlflow.MlflowClient().create_registered_model("lookup-test")
    assert tracking.champion(cfg) is None


def test_an_unreachable_registry_is_an_error_not_no_champion(monkeypatch, tracking_uri):
    from mlflow.exceptions import MlflowException

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tracking_uri(f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(MlflowException, match="API request to"):
        tracking.champion(RunConfig())
