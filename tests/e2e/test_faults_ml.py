"""Faults in the ML stages, injected for real: a SIGKILLed training process, a stopped MLflow server."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mmsearch.stages import merge, transform
from tests.helpers import small_config

pytestmark = pytest.mark.ml

MMSEARCH = str(Path(sys.executable).parent / "mmsearch")
MLFLOW = str(Path(sys.executable).parent / "mlflow")


@pytest.fixture(scope="module")
def transformed(small_raw, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    cfg = small_config()
    merge.merge(small_raw, root / "merged", cfg)
    transform.run(root / "merged", out_dir=root / "transform", cfg=cfg, tags={})
    return root


def _tags(run_id: str) -> str:
    return json.dumps({"dag_id": "mmsearch_training", "run_id": run_id})


def _train_cmd(root, out, *settings, lineage="kill-test"):
    cmd = [
        MMSEARCH,
        "train",
        "--transform-dir",
        str(root / "transform"),
        "--out",
        str(out),
        "--tags",
        _tags(lineage),
        "--set",
        "embedding_dim=16",
    ]
    for setting in settings:
        cmd += ["--set", setting]
    return cmd


def test_killed_training_resumes_from_its_last_epoch(transformed, tmp_path):
    out = tmp_path / "train"
    env = {**os.environ, "MMSEARCH_HOME": str(tmp_path / "home")}
    # the original design's model: a fixed number of steps per epoch, long enough to kill it mid-way
    cmd = _train_cmd(transformed, out, "feature_set=query", "epochs=12", "steps_per_epoch=300", "patience=12")
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = out / "candidate-0" / "checkpoints" / "epoch-003.index"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, "training ended before it could be killed"
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    assert not (out / "candidate-0" / "train.json").exists()

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    epochs = [line for line in again.stdout.splitlines() + again.stderr.splitlines() if line.startswith("Epoch ")]
    first_epoch = int(epochs[0].split()[1].split("/")[0])
    assert first_epoch >= 4, epochs[:3]  # resumed after the epochs the killed process finished
    summary = json.loads((out / "candidate-0" / "train.json").read_text())
    assert summary["epochs_run"] == 12 - first_epoch + 1
    assert first_epoch <= summary["best_epoch"] <= 12  # numbered as trained, not from 1 again
    statuses = _run_statuses(env, "kill-test")
    assert sorted(statuses) == ["FINISHED", "KILLED"]  # the abandoned attempt is closed, not left RUNNING


def _run_statuses(env, run_id):
    code = (
        "import json, mlflow; from mmsearch import paths; mlflow.set_tracking_uri(paths.mlflow_tracking_uri());"
        f"runs = mlflow.search_runs(experiment_names=['mmsearch-esci'], output_format='list',"
        f" filter_string=\"tags.`airflow.run_id` = '{run_id}'\");"
        "print(json.dumps([r.info.status for r in runs]))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on localhost, started and stopped by PID."""

    def __init__(self, root: Path):
        self.root, self.port = root, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self):
        cmd = [
            MLFLOW,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
        ]
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start")

    def stop(self):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path / "server")
    server.root.mkdir()
    server.start()
    yield server
    server.stop()


def _stage(env, *args, timeout=600):
    return subprocess.run([MMSEARCH, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_registry_down_retries_fails_clearly_and_never_moves_the_champion(transformed, tmp_path, mlflow_server):
    env = {**os.environ, "MMSEARCH_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": mlflow_server.uri}
    small = ["--set", "embedding_dim=16", "--set", "registry_attempts=2"]
    merged = transformed / "merged"
    baselines = _stage(
        env,
        "baselines",
        "--transform-dir",
        str(transformed / "transform"),
        "--out",
        str(tmp_path / "baselines"),
        *small,
        "--set",
        "train_query_baseline=false",
    )
    assert baselines.returncode == 0, baselines.stderr[-3000:]
    for name, settings in (("strong", ["epochs=20", "patience=5"]), ("weak", ["epochs=1", "steps_per_epoch=1"])):
        out = tmp_path / name
        trained = _stage(env, *_train_cmd(transformed, out / "train", *settings, lineage=name)[1:])
        assert trained.returncode == 0, trained.stderr[-3000:]
        evaluated = _stage(
            env,
            "evaluate",
            "--merged-dir",
            str(merged),
            "--model",
            str(out / "train" / "candidate-0" / "train.json"),
            "--baselines",
            str(tmp_path / "baselines" / "baselines.json"),
            "--out",
            str(out / "evaluate"),
            *small,
        )
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]

    def register(name):
        return _stage(
            env,
            "register",
            "--model",
            str(tmp_path / name / "train" / "candidate-0" / "train.json"),
            "--scores",
            str(tmp_path / name / "evaluate" / "scores.json"),
            "--out",
            str(tmp_path / name),
            "--tags",
            _tags(name),
            *small,
        )

    first = register("strong")
    assert first.returncode == 0, first.stderr[-3000:]
    registered = json.loads(first.stdout)["registry"]
    assert registered["aliases"] == ["challenger", "champion"], registered["decision"]
    champion = registered["version"]

    mlflow_server.stop()
    started = time.monotonic()
    down = register("weak")
    took = time.monotonic() - started
    assert down.returncode == 3
    line = down.stderr.strip().splitlines()[-1]
    assert line.startswith(
        f"mmsearch register: error: MLflow tracking server {mlflow_server.uri} unreachable "
        "after 2 attempts; nothing was promoted"
    )
    assert "MLflow unreachable (attempt 1)" in down.stderr  # it retried, with backoff, before giving up
    assert took < 120

    mlflow_server.start()
    state = _registry(env)
    assert state["champion"] == str(champion) and state["versions"] == [int(champion)]
    retried = register("weak")  # the retry after the outage registers it, as a challenger only
    assert retried.returncode == 0, retried.stderr[-3000:]
    result = json.loads(retried.stdout)["registry"]
    assert result["aliases"] == ["challenger"] and not result["decision"]["promote"]
    assert _registry(env)["champion"] == str(champion)


def _registry(env):
    code = (
        "import json, mlflow; c = mlflow.MlflowClient();"
        "v = c.search_model_versions(\"name = 'mmsearch-esci'\");"
        "print(json.dumps({'versions': sorted(int(x.version) for x in v),"
        " 'champion': str(c.get_model_version_by_alias('mmsearch-esci', 'champion').version)}))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])
