"""What the end-to-end suites share: the bundled sample's size and short trainings, a stack of
their own (Airflow on SQLite, a DVC repository with a local remote, MLflow's SQLite registry
under the stack's home), and `airflow dags test` runs read back from their logs and outputs."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from mmsearch import paths
from mmsearch.tools.sample_data import SampleSpec
from tests.helpers import ML_PYTHON, REPO_ROOT, isolated_env, make_dvc_repo

# the bundled sample's size: on fewer queries a test split of a dozen queries makes any two models tie
SAMPLE = SampleSpec(queries=300, products=1600, mean_judgements=16, topics=12, values=3, seed=11)
FAST = {"epochs": 6, "steps_per_epoch": 40, "patience": 3}
# One step of one epoch, from scratch (class weights: the wide part does not start from the
# regression), served by argmax: a model that learned nothing, which the gate must refuse.
WEAK = {
    "epochs": 1,
    "steps_per_epoch": 1,
    "patience": 1,
    "train_query_baseline": False,
    "decision_rule": "argmax",
    "candidates": [{"class_weighting": "sqrt"}],
}


def make_stack(root: Path) -> dict:
    env = isolated_env(
        root / "home",
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        MMSEARCH_ML_PYTHON=ML_PYTHON,
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    )
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    repo = make_dvc_repo(root, SAMPLE)
    (root / "cwd").mkdir()
    return {"env": env, "repo": repo, "home": root / "home", "cwd": root / "cwd"}


def run_dag(stack, conf: dict, logical_date: str) -> tuple[subprocess.CompletedProcess, str]:
    conf = {"dvc_repo": str(stack["repo"]), **conf}
    result = subprocess.run(
        ["airflow", "dags", "test", "mmsearch_training", logical_date, "--conf", json.dumps(conf)],
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=stack["cwd"],
    )
    return result, result.stdout + result.stderr


def run_dir_of(stack, log: str) -> Path:
    """The directory of the run a `dags test` log reports (not the newest by mtime: retention
    touches older runs' directories)."""
    run_id = re.search(r"DagRun Finished: dag_id=\w+, .*?run_id=([^,]+),", log).group(1)
    return stack["home"] / "runs" / paths.run_dir_for(run_id).name


def dags_test(stack, conf: dict, logical_date: str) -> dict:
    result, log = run_dag(stack, conf, logical_date)
    assert result.returncode == 0, log[-5000:]
    assert "state=success" in log, log[-5000:]
    return json.loads((run_dir_of(stack, log) / "summary.json").read_text())


def registry_state(stack) -> dict:
    return in_ml_env(
        stack,
        """
        import json, mlflow
        client = mlflow.MlflowClient()
        versions = client.search_model_versions("name = 'mmsearch-esci'")
        champion = client.get_model_version_by_alias("mmsearch-esci", "champion").version
        print(json.dumps({"versions": sorted(int(v.version) for v in versions), "champion": str(champion)}))
    """,
    )


def failures(stack, log: str) -> list[dict]:
    """The failed tasks of the run a `dags test` log reports, as the failure callback recorded them."""
    return json.loads((stack["home"] / "failures" / f"{run_dir_of(stack, log).name}.json").read_text())["failed"]


def in_ml_env(stack, code: str) -> dict:
    env = {**stack["env"], "MLFLOW_TRACKING_URI": f"sqlite:///{stack['home'] / 'mlflow' / 'mlflow.db'}"}
    result = subprocess.run(
        [ML_PYTHON, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
