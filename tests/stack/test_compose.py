"""docker-compose.yaml and the Dockerfile, checked without a Docker engine: Debian's
docker-compose resolves the file (`docker-compose config`), and the test reads what it
resolves to. Building and starting the containers needs an engine and is not done here."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import readme
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose missing: `make test` installs it (make system-deps)"
)

AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
SHARED_VOLUME, SHARED_PATH = "mmsearch-home", "/opt/mmsearch-home"
ML_PYTHON = "/opt/ml-venv/bin/python"


def compose_config(env_file: Path) -> subprocess.CompletedProcess:
    # a clean environment: only the env file decides (no developer's .env or exported secrets)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        [
            "docker-compose",
            "--project-directory",
            str(REPO_ROOT),
            "--env-file",
            str(env_file),
            "-f",
            str(REPO_ROOT / "docker-compose.yaml"),
            "config",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


EXAMPLE = REPO_ROOT / ".env.example"
# the secrets .env.example leaves empty, as a person fills them in
SECRETS = {name: f"secret-of-{name.lower()}" for name in re.findall(r"^([A-Z_]+)=$", EXAMPLE.read_text(), re.M)}


def filled(env_file: Path, leave_out: str = "") -> Path:
    """.env.example with every empty secret filled in (but `leave_out`'s line), written to `env_file`."""
    lines = [line for line in EXAMPLE.read_text().splitlines() if not (leave_out and line.startswith(f"{leave_out}="))]
    env_file.write_text("\n".join(line + SECRETS.get(line[:-1], "") for line in lines) + "\n")
    return env_file


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict:
    result = compose_config(filled(tmp_path_factory.mktemp("compose") / ".env"))
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_services_follow_airflows_official_layout(resolved):
    assert set(resolved["services"]) == AIRFLOW_SERVICES | {"postgres", "redis", "mlflow", "rerank"}
    for name in AIRFLOW_SERVICES - {"airflow-init"} | {"postgres", "redis", "mlflow", "rerank"}:
        assert resolved["services"][name]["healthcheck"]["test"], name
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        depends = resolved["services"][name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["mlflow"]["condition"] == "service_healthy"
    init_env = resolved["services"]["airflow-init"]["environment"]
    assert init_env["_AIRFLOW_DB_MIGRATE"] == "true" and init_env["_AIRFLOW_WWW_USER_CREATE"] == "true"


def test_every_airflow_service_shares_the_volume_and_the_ml_environment(resolved):
    assert {SHARED_VOLUME, "postgres-db", "mlflow-artifacts"} <= set(resolved["volumes"])
    for name in AIRFLOW_SERVICES:
        service = resolved["services"][name]
        mounts = {volume.split(":")[0]: volume.split(":")[1] for volume in service["volumes"]}
        assert mounts[SHARED_VOLUME] == SHARED_PATH, name
        assert mounts[str(REPO_ROOT)] == "/opt/mmsearch", name
        env = service["environment"]
        assert env["MMSEARCH_HOME"] == SHARED_PATH
        assert env["MMSEARCH_ML_PYTHON"] == ML_PYTHON
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"] == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
        assert env["MLFLOW_TRACKING_USERNAME"] == "admin"
        assert env["MLFLOW_TRACKING_PASSWORD"] == SECRETS["MLFLOW_ADMIN_PASSWORD"]
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/mmsearch/dags"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    mlflow = resolved["services"]["mlflow"]
    script = "\n".join(mlflow["command"])
    assert "--app-name=basic-auth" in script and "--serve-artifacts" in script
    assert '--backend-store-uri="postgresql+psycopg2://mlflow:$${MLFLOW_DB_PASSWORD}@postgres/mlflow"' in script
    assert mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == SECRETS["MLFLOW_ADMIN_PASSWORD"]
    assert "--requirepass" in resolved["services"]["redis"]["command"]


def test_airflow_services_get_the_settings_file_the_local_stack_reads(resolved):
    from mmsearch.stack.settings import shared_airflow_settings

    shared = shared_airflow_settings()
    assert "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL" in shared
    for name in AIRFLOW_SERVICES:
        env = resolved["services"][name]["environment"]
        assert {key: env.get(key) for key in shared} == shared, name


def test_the_champion_is_served_on_demand_by_the_reranker(resolved):
    serve = resolved["services"]["rerank"]
    assert serve["profiles"] == ["serve"]
    assert serve["command"][:2] == ["-m", "mmsearch.rerank"] and "--dvc-repo=/opt/mmsearch" in serve["command"]
    assert serve["environment"]["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert serve["environment"]["MMSEARCH_RERANK_TOKEN"] == SECRETS["RERANK_TOKEN"]
    assert serve["healthcheck"]["test"][-1].endswith(":5001/health")


def test_ports_are_bound_to_localhost_only(resolved):
    published = {name: service["ports"] for name, service in resolved["services"].items() if "ports" in service}
    assert set(published) == {"airflow-apiserver", "mlflow", "rerank"}
    for ports in published.values():
        assert all(str(port).startswith("127.0.0.1:") for port in ports), ports


def test_missing_secrets_stop_compose_with_the_variable_named(tmp_path):
    result = compose_config(filled(tmp_path / "incomplete.env", leave_out="AIRFLOW_JWT_SECRET"))
    assert result.returncode != 0
    assert "set AIRFLOW_JWT_SECRET in .env" in result.stderr


def test_the_example_as_shipped_is_refused_until_its_secrets_are_filled_in():
    assert len(SECRETS) == 9 and "change-me" not in EXAMPLE.read_text()
    result = compose_config(EXAMPLE)
    assert result.returncode != 0 and re.search(r"set [A-Z_]+ in \.env", result.stderr), result.stderr


def test_dockerfile_extends_the_airflow_image_with_the_ml_environment_the_dag_uses():
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.2-python3\.11$", dockerfile, re.M)
    assert f"MMSEARCH_ML_PYTHON={ML_PYTHON}" in dockerfile
    assert "pip install --no-cache-dir -r /tmp/requirements-ml.txt" in dockerfile  # the same lock as `make`
    lock = (REPO_ROOT / "requirements-ml.txt").read_text()
    assert re.search(r"^psycopg2-binary==", lock, re.M), "the MLflow server's Postgres driver"
    assert (REPO_ROOT / ".env.example").exists() and ".env" in (REPO_ROOT / ".gitignore").read_text().split()


def test_the_readme_env_file_step_gives_a_file_compose_resolves(tmp_path):
    """The README's compose block as far as this machine goes: its `cp` makes the `.env` that
    `docker-compose config` resolves (the build and the containers need a Docker engine)."""
    shutil.copy(EXAMPLE, tmp_path)
    copy = readme.command("compose", "cp ")
    result = readme.run(copy, dict(os.environ), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert compose_config(tmp_path / ".env").returncode != 0  # as copied: its secrets are empty
    assert compose_config(filled(tmp_path / ".env")).returncode == 0
