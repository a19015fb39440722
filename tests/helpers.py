"""Helpers shared by the test modules: isolated environments, small generated data, real DVC
repositories with local remotes. No mocks: every helper makes the real thing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from mmsearch import config as C
from mmsearch.tools.sample_data import SampleSpec, generate

REPO_ROOT = Path(__file__).resolve().parents[1]
ML_PYTHON = os.environ.get("MMSEARCH_ML_PYTHON", str(REPO_ROOT / ".venvs" / "ml" / "bin" / "python"))
SMALL = SampleSpec(queries=40, products=240, mean_judgements=12, topics=8, intents=3, dim=16, seed=3)


def isolated_env(home: Path, **extra: str) -> dict:
    """This process's environment without its Airflow and MLflow settings, writing under `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_"))}
    env.update({"MMSEARCH_HOME": str(home), "AIRFLOW_HOME": str(home / "airflow"), **extra})
    return env


def small_config(**overrides) -> C.RunConfig:
    return C.RunConfig(embedding_dim=SMALL.dim, **overrides)


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "dvc"
    return subprocess.run([str(exe), *args], cwd=repo, capture_output=True, text=True, check=False)


def make_dvc_repo(root: Path, spec: SampleSpec) -> Path:
    """A DVC repo (no git) whose data/raw was pushed to a local-directory remote, then removed
    from the workspace and the cache, so that only a real `dvc pull` brings it back."""
    repo, remote = root / "repo", root / "remote"
    repo.mkdir(parents=True)
    for args in (
        ("init", "--no-scm", "-q"),
        ("config", "core.analytics", "false"),
        ("remote", "add", "-d", "local", str(remote)),
    ):
        assert dvc(repo, *args).returncode == 0
    generate(repo / "data" / "raw", spec)
    for args in (("add", "data/raw", "-q"), ("push", "-q")):
        result = dvc(repo, *args)
        assert result.returncode == 0, result.stderr
    shutil.rmtree(repo / "data" / "raw")
    shutil.rmtree(repo / ".dvc" / "cache")
    return repo
