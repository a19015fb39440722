"""End to end, everything real: `airflow dags test` against a DVC remote in a temporary
directory, TensorFlow Transform on Beam, Keras, MLflow's SQLite registry; then the
champion loaded from another process. No mocks."""

import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from mmsearch import config as C
from mmsearch import features as F
from tests import readme
from tests.e2e.support import FAST, SAMPLE, WEAK, dags_test, failures, in_ml_env, registry_state, run_dag, run_dir_of
from tests.helpers import ML_PYTHON, REPO_ROOT

pytestmark = pytest.mark.e2e


def tree_state(directory: Path) -> dict:
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in directory.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def first_run(stack):
    """The README's `make run`, with this suite's DVC repository and short training: its output
    is what a person reads."""
    conf = json.dumps({"dvc_repo": str(stack["repo"]), **FAST})
    make_run = readme.command("two-commands", "make run")
    result = readme.run(
        f"{make_run} CONF={shlex.quote(conf)} DATE=2026-01-01T02:00:00+00:00", stack["env"], timeout=900
    )
    assert result.returncode == 0, result.stderr[-5000:]
    printed = result.stderr + result.stdout
    summary = json.loads((Path(re.search(r"^outputs: (.+)$", printed, re.M).group(1)) / "summary.json").read_text())
    return {**summary, "printed": printed}


def test_make_run_prints_a_line_per_task_the_summary_and_what_to_do_next(first_run):
    lines = first_run["printed"].splitlines()
    assert len(lines) <= 40, first_run["printed"]
    progress = [line.split() for line in lines if line.startswith("  ")]
    assert progress[0][:2] == ["configure", "success"] and progress[0][-1] == "s"
    assert {"model.train[0]", "model.train[1]", "model.register"} <= {fields[0] for fields in progress}
    states = {fields[0]: fields[1] for fields in progress}
    assert states.pop("model.approve_promotion") == "skipped"  # promotion: auto, no person asked
    assert set(states.values()) == {"success"}, progress
    assert lines[-1].startswith("next: `make mlflow-ui` shows this run") and "v1 is the champion" in lines[-1]
    log = Path(re.search(r"Airflow's log: (\S+)", first_run["printed"]).group(1))
    assert log.parent == Path(first_run["run_dir"]) and "[DAG TEST] end task" in log.read_text()
    # TensorFlow's native start-up lines are filtered out of the tasks' logs
    assert "cuInit" not in log.read_text() and "cpu_feature_guard" not in log.read_text()
    assert "INFO mmsearch.train: trained candidate-0" in log.read_text()


def test_dag_run_pulls_merges_and_registers_a_champion(stack, first_run):
    run_dir = Path(first_run["run_dir"])
    assert list(stack["cwd"].iterdir()) == []  # MLflow artifacts under MMSEARCH_HOME, not ./mlruns
    assert (stack["home"] / "mlflow" / "artifacts").is_dir()
    assert (stack["repo"] / "data" / "raw" / C.ESCI_FILE).exists()  # brought back by dvc pull
    merged = pq.read_table(run_dir / "merged" / "train")
    assert {F.QUERY_EMBEDDING, F.PRODUCT_TEXT_EMBEDDING, F.PRODUCT_IMAGE_EMBEDDING} <= set(merged.schema.names)
    example_ids = [
        i
        for p in (run_dir / "merged").rglob("*.parquet")
        for i in pq.read_table(p, columns=["example_id"]).column("example_id").to_pylist()
    ]
    merged_rows = json.loads((run_dir / "merged" / "manifest.json").read_text())["rows"]
    assert len(example_ids) == len(set(example_ids)) == merged_rows  # one row per judgement
    for split in C.SPLITS:
        assert list((run_dir / "transform" / "transformed_examples" / f"Split-{split}").glob("*.tfrecord"))
    assert (run_dir / "transform" / "transform_graph" / "metadata" / "schema.pbtxt").exists()
    registry = first_run["registry"]
    assert registry["aliases"] == ["challenger", "champion"], registry["decision"]
    assert registry["decision"]["reason"].startswith("no champion yet; macro_f1 ")
    assert " over baseline_clip (95 % CI " in registry["decision"]["reason"]
    assert set(first_run["metrics"]) == {"model", "baseline_majority", "baseline_clip", "baseline_query"}
    uncertainty = json.loads((run_dir / "evaluate" / "intervals.json").read_text())
    for name in first_run["metrics"]:  # the gate's promise: no baseline significantly better
        if name != "model":
            assert uncertainty["differences"][name]["macro_f1"]["high"] >= 0, name
        low, high = first_run["intervals"][name]["macro_f1"]
        assert low <= first_run["metrics"][name]["macro_f1"] <= high, name
    assert len(first_run["candidates"]) == 2  # the default grid, chosen on validation
    assert first_run["model"]["candidate"] in {row["candidate"] for row in first_run["candidates"]}


def test_mlflow_run_has_params_epoch_metrics_emissions_and_lineage(stack, first_run):
    found = in_ml_env(
        stack,
        """
        import json, mlflow
        client = mlflow.MlflowClient()
        version = client.get_model_version_by_alias("mmsearch-esci", "champion")
        run = client.get_run(version.run_id)
        parent = client.get_run(run.data.tags["mlflow.parentRunId"])
        children = client.search_runs([run.info.experiment_id],
                                      f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
        evaluation = [a.path for a in client.list_artifacts(run.info.run_id, "evaluation")]
        kind = client.get_experiment(run.info.experiment_id).tags.get("mlflow.experimentKind")
        print(json.dumps({"params": run.data.params, "metrics": sorted(run.data.metrics), "epochs": len(history),
                          "artifacts": artifacts + evaluation, "tags": version.tags, "card": version.description,
                          "children": sorted(r.info.run_name for r in children), "kind": kind,
                          "parent_tags": parent.data.tags}))
    """,
    )
    for name in ("batch_size", "epochs", "input_dim", "optimizer", "feature_set", "steps_per_epoch", "patience"):
        assert name in found["params"]
    assert found["params"]["input_dim"] == str(3 * F.WHITENED_DIM + len(F.PAIR_FEATURES))
    for name in (
        "accuracy",
        "val_accuracy",
        "loss",
        "val_loss",
        "codecarbon_emissions_kg",
        "test/macro_f1",
        "test/macro_f1_ci_low",
        "test/macro_f1_ci_high",
        "test_model_minus_baseline_clip/macro_f1_ci_low",
        "test/ece",
        "test_baseline_majority/macro_f1",
        "test_baseline_clip/ndcg",
        "test_baseline_query/ndcg",
        "selection/val_macro_f1",
        "test_per_class/recall_C",
    ):
        assert name in found["metrics"]
    # one name, one meaning: no second spelling of the validation metrics
    assert not [m for m in found["metrics"] if m.startswith("validation_")]
    assert found["epochs"] >= 2  # one point per epoch
    assert "emissions.csv" in found["artifacts"] and "decision_rule.json" in found["artifacts"]
    for figure in ("reliability_model.png", "precision_recall_model.png", "confusion_model.png"):
        assert f"evaluation/{figure}" in found["artifacts"]
    assert found["children"] == ["baseline-query", "candidate-0", "candidate-1"]  # nested under the DAG run's
    assert found["parent_tags"]["selected_run_id"]
    assert found["kind"] == "custom_model_development"  # MLflow's UI opens it on its training runs
    assert "| baseline_clip |" in found["card"] and "promoted to champion" in found["card"]
    assert "95 % interval" in found["card"]
    tags = found["tags"]
    assert tags["airflow_dag_id"] == "mmsearch_training" and tags["airflow_run_id"].startswith("manual__")
    assert (
        tags["feature_set"] == "query_product" and len(tags["git_commit"]) in (40, 7) or tags["git_commit"] == "unknown"
    )
    assert {"dvc_md5.raw", f"dvc_md5.{C.ESCI_FILE}", f"dvc_md5.{C.PRODUCT_FEATURES_FILE}"} <= set(tags)
    for candidate in ("candidate-0", "candidate-1"):
        assert (Path(first_run["run_dir"]) / "train" / candidate / "emissions.csv").exists()


def test_mlflow_ui_opens_on_the_training_runs(stack, first_run):
    """The README's `make mlflow-ui`, looked at in Chromium, then Ctrl-C: the printed address shows the
    DAG run's parent run, whose description links the chosen candidate. Screenshots for a person."""
    from playwright.sync_api import expect, sync_playwright

    from tests.stack.support import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

    command = ["bash", "-c", readme.command("mlflow-ui", "make mlflow-ui")]
    ui = subprocess.Popen(
        command,
        env=readme.shell_env(stack["env"]),
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        printed = ""
        while "stop with" not in printed:
            line = ui.stderr.readline()
            assert line, f"mmsearch mlflow-ui ended before printing its address: {printed}"
            printed += line
        runs_url = re.search(r"MLflow UI +(http://127\.0\.0\.1:\d+/#/experiments/\d+/runs)", printed).group(1)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(runs_url)
            expect(page.get_by_text(first_run["run_id"]).first).to_be_visible(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "mlflow-ui-training-runs.png"))
            page.get_by_text(first_run["run_id"]).first.click()
            expect(page.get_by_text("The chosen model is").first).to_be_visible(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "mlflow-ui-parent-run.png"))
            browser.close()
    finally:
        os.killpg(ui.pid, signal.SIGINT)  # Ctrl-C: the terminal's whole foreground group
        ui.wait(timeout=30)
    with pytest.raises(httpx.ConnectError):  # the server went with it
        httpx.get(runs_url.split("/#")[0], timeout=5)


def test_the_readme_loads_the_champion_and_predicts_pairs_of_the_sample(stack, first_run):
    """The README's Python block, pasted into the ML environment's python in a checkout that
    `make run` pulled (this suite's DVC repository)."""
    result = subprocess.run(
        [ML_PYTHON, "-c", readme.block("load-champion")],
        env=stack["env"],
        cwd=stack["repo"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    header, *rows = result.stdout.strip().splitlines()[-4:]
    assert header.split() == ["esci_label", "p_E", "p_S", "p_C", "p_I"], result.stdout
    assert len(rows) == 3 and all(row.split()[1] in {"E", "S", "C", "I"} for row in rows), result.stdout


def test_champion_predicts_raw_rows_from_another_process(stack, first_run):
    test_split = Path(first_run["run_dir"]) / "merged" / "test"
    found = in_ml_env(
        stack,
        f"""
        import json, mlflow, numpy as np, pyarrow.parquet as pq
        table = pq.read_table({str(test_split)!r}).slice(0, 7)
        frame = table.select(["query_embedding", "product_text_embedding", "product_image_embedding"]).to_pandas()
        model = mlflow.pyfunc.load_model("models:/mmsearch-esci@champion")
        out = model.predict(frame)
        total = out[["p_E", "p_S", "p_C", "p_I"]].sum(axis=1).to_numpy()
        print(json.dumps({{"columns": list(out.columns), "labels": out.esci_label.tolist(),
                          "sums": total.tolist(), "rows": len(out)}}))
    """,
    )
    assert found["columns"] == ["esci_label", "p_E", "p_S", "p_C", "p_I"]
    assert found["rows"] == 7 and set(found["labels"]) <= {"E", "S", "C", "I"}
    assert all(abs(s - 1) < 1e-4 for s in found["sums"])


def test_weaker_run_stays_challenger_and_champion_is_untouched(stack, first_run):
    champion = first_run["registry"]["version"]
    weak = dags_test(stack, WEAK, "2026-01-02T02:00:00+00:00")
    registry = weak["registry"]
    assert registry["version"] != champion
    assert registry["aliases"] == ["challenger"]
    decision = registry["decision"]
    assert decision["promote"] is False and decision["champion_version"] == champion
    assert "is significantly below a baseline: " in decision["reason"]  # refused by the baselines already
    assert " over baseline_clip (95 % CI -" in decision["reason"]
    found = in_ml_env(
        stack,
        """
        import json, mlflow
        client = mlflow.MlflowClient()
        print(json.dumps({"champion": client.get_model_version_by_alias("mmsearch-esci", "champion").version}))
    """,
    )
    assert str(found["champion"]) == str(champion)


def test_dags_test_again_for_the_same_logical_date_registers_nothing_new(stack, first_run):
    before = registry_state(stack)
    again = dags_test(stack, WEAK, "2026-01-02T02:00:00+00:00")  # the weak run's date, run again
    assert registry_state(stack) == before
    # the same inputs as the weak run: it matches the challenger that lost, and does not train it again
    assert again["skipped"]["version"] == str(before["versions"][-1])
    assert again["skipped"]["reason"].startswith(f"nothing changed: mmsearch-esci v{before['versions'][-1]} ")


def test_a_run_with_nothing_new_skips_in_seconds_and_says_why(stack, first_run):
    before = registry_state(stack)
    skipped = dags_test(stack, FAST, "2026-01-05T02:00:00+00:00")
    reason = skipped["skipped"]["reason"]
    version = first_run["registry"]["version"]
    assert reason.startswith(f"nothing changed: mmsearch-esci v{version} (champion), registered by run ")
    assert "was trained on the same data, code and settings (fingerprint " in reason
    assert registry_state(stack) == before
    # in seconds because nothing after the check ran (a wall-clock bound here failed on a slow day:
    # the skip took 37.8 s there; timings belong to the bench)
    run_dir = Path(skipped["run_dir"])
    assert not (run_dir / "merged").exists() and not (run_dir / "transform").exists()
    raw_events = asset_events(stack, "mmsearch_raw_data")
    assert len(raw_events) == 1  # the first run's pull saw the data first; nothing new since

    forced = dags_test(stack, {**FAST, "force_retrain": True}, "2026-01-06T02:00:00+00:00")
    # the same data, code and settings: the same weights and the same test metrics, to the last bit
    assert forced["model"]["weights_sha256"] == first_run["model"]["weights_sha256"]
    assert forced["metrics"]["model"] == first_run["metrics"]["model"]
    assert {name: forced["intervals"][name] for name in first_run["intervals"]} == first_run["intervals"]
    decision = forced["registry"]["decision"]  # identical to the champion: no gain, stays challenger
    assert not decision["promote"], decision
    assert decision["reason"].startswith(f"macro_f1 +0.000 over champion v{version} (95 % CI +0.000 to +0.000)")
    drift = json.loads((Path(forced["run_dir"]) / "drift" / "drift.json").read_text())
    assert drift["against"] == f"champion v{version}'s training data"
    assert drift["score"] < 0.6 and drift["labels"]["chi2_pvalue"] > 0.9  # the same data: no drift
    assert (Path(forced["run_dir"]) / "drift" / "drift.png").exists()


def asset_events(stack, name: str) -> list[dict]:
    code = textwrap.dedent(
        f"""
        import json
        from sqlalchemy import select
        from airflow.models.asset import AssetEvent, AssetModel
        from airflow.utils.session import create_session
        with create_session() as session:
            rows = session.execute(select(AssetEvent.extra, AssetEvent.source_dag_id).join(
                AssetModel, AssetEvent.asset_id == AssetModel.id).where(AssetModel.name == {name!r})).all()
        print(json.dumps([{{"extra": extra, "dag_id": dag_id}} for extra, dag_id in rows]))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], env=stack["env"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_new_champion_is_an_asset_event_and_the_rank_dag_ranks_with_it(stack, first_run):
    import numpy as np

    events = asset_events(stack, "mmsearch_champion_model")
    assert {"registered_model": "mmsearch-esci", "version": first_run["registry"]["version"]} in [
        e["extra"] for e in events
    ]
    result = subprocess.run(
        ["airflow", "dags", "test", "mmsearch_rank", "2026-01-07T02:00:00+00:00"],
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=stack["cwd"],
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "state=success" in log, log[-5000:]
    rank_dir = run_dir_of(stack, log) / "rank"
    summary = json.loads((rank_dir / "rank.json").read_text())
    ranked = pq.read_table(rank_dir / "ranked.parquet").to_pandas()
    merged = json.loads((Path(first_run["run_dir"]) / "merged" / "manifest.json").read_text())
    assert len(ranked) == summary["rows"] == merged["rows"]  # every working-set pair
    assert list(ranked.columns) == [
        "query_id",
        "product_id",
        "rank",
        "expected_gain",
        "label",
        "p_I",
        "p_C",
        "p_S",
        "p_E",
    ]
    for _, group in ranked.groupby("query_id"):
        assert group["rank"].tolist() == list(range(1, len(group) + 1))
        assert np.all(np.diff(group["expected_gain"].to_numpy()) <= 1e-7)
    assert 0.5 < summary["ndcg"] <= 1.0
    assert f"mean nDCG {summary['ndcg']:.4f}" in log


def test_drift_beyond_the_threshold_fails_before_training(stack, first_run, tmp_path):
    import numpy as np
    import pyarrow as pa

    shifted = tmp_path / "raw"
    shutil.copytree(stack["repo"] / "data" / "raw", shifted)
    products = pq.read_table(shifted / C.PRODUCT_FEATURES_FILE)
    column = products.column("clip_image_features").combine_chunks()
    values = column.values.to_numpy().reshape(len(column), -1) + np.float32(0.05)  # a new image encoder
    moved = pa.ListArray.from_arrays(column.offsets, pa.array(values.ravel()))
    pq.write_table(products.set_column(2, "clip_image_features", moved), shifted / C.PRODUCT_FEATURES_FILE)
    before = registry_state(stack)
    conf = {**FAST, "raw_data_dir": str(shifted), "drift_threshold": 0.7}
    result, log = run_dag(stack, conf, "2026-01-08T02:00:00+00:00")
    assert "state=failed" in log
    failed = failures(stack, log)
    assert [f["task_id"] for f in failed] == ["data.drift"]
    assert "exceeds drift_threshold 0.7 against champion v" in failed[0]["reason"]
    assert "[DAG TEST] starting task_id=model.train" not in log
    assert "[DAG TEST] starting task_id=model.baselines" not in log
    assert registry_state(stack) == before


def test_bad_input_fails_validate_and_loses_nothing(stack, first_run, tmp_path):
    import numpy as np
    import pyarrow as pa

    bad = tmp_path / "raw"
    shutil.copytree(stack["repo"] / "data" / "raw", bad)
    products = pq.read_table(bad / C.PRODUCT_FEATURES_FILE)
    column = products.column("clip_image_features").combine_chunks()
    values = column.values.to_numpy().copy()
    values[7 * 768 + 3] = np.inf
    damaged = pa.ListArray.from_arrays(column.offsets, pa.array(values))
    pq.write_table(products.set_column(2, "clip_image_features", damaged), bad / C.PRODUCT_FEATURES_FILE)
    before_registry, before_tree = registry_state(stack), tree_state(Path(first_run["run_dir"]))

    result, log = run_dag(stack, {**FAST, "raw_data_dir": str(bad)}, "2026-01-03T02:00:00+00:00")
    assert "state=failed" in log
    assert (
        "product_features.parquet: column 'clip_image_features': has NaN or infinite values "
        "(e.g. product_id 'B000000007' (row 7))"
    ) in log
    # validate failed before writing anything: only the fingerprint check's record is there, and
    # publish's report that a raw_data_dir run publishes nothing
    run_dir = run_dir_of(stack, log)
    assert sorted(p.name for p in run_dir.iterdir()) == ["changes", "publish"]
    assert not json.loads((run_dir / "publish" / "publish.json").read_text())["published"]
    failed = failures(stack, log)
    assert [f["task_id"] for f in failed] == ["data.validate"]  # what `make run` ends with
    assert failed[0]["reason"].endswith("has NaN or infinite values (e.g. product_id 'B000000007' (row 7))")
    assert registry_state(stack) == before_registry
    assert tree_state(Path(first_run["run_dir"])) == before_tree


def test_registering_the_same_run_again_reuses_its_version(stack, first_run):
    before = registry_state(stack)
    run_dir = Path(first_run["run_dir"])
    tags = {"dag_id": "mmsearch_training", "run_id": first_run["run_id"]}
    env = {**stack["env"], "MLFLOW_TRACKING_URI": f"sqlite:///{stack['home'] / 'mlflow' / 'mlflow.db'}"}
    result = subprocess.run(
        [
            str(Path(ML_PYTHON).parent / "mmsearch"),
            "register",
            "--model",
            str(run_dir / "select" / "selection.json"),
            "--scores",
            str(run_dir / "evaluate" / "scores.json"),
            "--out",
            str(run_dir.parent / "re-register"),
            "--tags",
            json.dumps(tags),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads(result.stdout)["registry"]
    assert again["version"] == first_run["registry"]["version"]
    assert registry_state(stack) == before  # no new version, champion unchanged


# The re-ranking service (mmsearch.stack.rerank_app) of this stack's champion: its catalogue found
# through the champion's lineage in the DVC repository's cache, its answers against the pyfunc's.

TOKEN = "e2e-token"


@pytest.fixture(scope="module")
def reranker(stack, first_run):
    from mmsearch.stack.settings import free_port

    port = free_port()
    env = {
        **stack["env"],
        "MLFLOW_TRACKING_URI": f"sqlite:///{stack['home'] / 'mlflow' / 'mlflow.db'}",
        "MMSEARCH_RERANK_TOKEN": TOKEN,
    }
    log = stack["home"] / "rerank.log"
    command = [ML_PYTHON, "-m", "mmsearch.stack.rerank_app", "--port", str(port), "--dvc-repo", str(stack["repo"])]
    with open(log, "wb") as out:
        process = subprocess.Popen([*command, "--poll-seconds", "1"], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                httpx.get(f"{url}/health", timeout=2).raise_for_status()
                break
            except httpx.TransportError:
                time.sleep(0.5)
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        yield {"url": url, "client": client, "log": log, "env": env}
    finally:
        process.terminate()
        process.wait(timeout=30)


def judged_query(stack) -> tuple[str, list, list]:
    """The sample's query with the most judged products: its id, embedding and product ids."""
    raw_dir = stack["repo"] / "data" / "raw"
    judged = pq.read_table(raw_dir / C.ESCI_FILE, columns=["query_id", "product_id"]).to_pandas()
    query_id = judged.query_id.value_counts().index[0]
    queries = pq.read_table(raw_dir / C.QUERY_FEATURES_FILE).to_pandas().set_index("query_id")
    embedding = [float(v) for v in queries.loc[str(query_id), "clip_text_features"]]  # SQID's ids are strings
    return str(query_id), embedding, judged[judged.query_id == query_id].product_id.tolist()


def pyfunc_answers(stack, embedding: list, product_ids: list) -> dict:
    """The registered pyfunc's p_* for each (query, product) pair, from the raw product file."""
    code = f"""
        import json, mlflow, numpy as np, pandas as pd, pyarrow.parquet as pq
        ids = {product_ids!r}
        products = pq.read_table({str(stack["repo"] / "data" / "raw" / C.PRODUCT_FEATURES_FILE)!r}).to_pandas()
        products = products.set_index("product_id").loc[ids]
        frame = pd.DataFrame({{
            "query_embedding": [np.asarray({embedding!r}, np.float32)] * len(ids),
            "product_text_embedding": [np.asarray(v, np.float32) for v in products.clip_text_features],
            "product_image_embedding": [np.asarray(v, np.float32) for v in products.clip_image_features],
        }})
        answer = mlflow.pyfunc.load_model("models:/mmsearch-esci@champion").predict(frame)
        answer["product_id"] = ids
        print(json.dumps(answer.to_dict(orient="records")))
    """
    return {row["product_id"]: row for row in in_ml_env(stack, code)}


def test_the_reranker_orders_real_candidates_as_the_pyfunc_expected_gains_do(stack, reranker):
    query_id, embedding, product_ids = judged_query(stack)
    response = reranker["client"].post("/rerank", json={"query_embedding": embedding, "product_ids": product_ids})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_version"] == registry_state(stack)["champion"]
    expected = pyfunc_answers(stack, embedding, product_ids)
    gains = {p: sum(F.ESCI_GAINS[label] * row[f"p_{label}"] for label in "ESCI") for p, row in expected.items()}
    assert [p["product_id"] for p in answer["products"]] == sorted(product_ids, key=lambda p: -gains[p])
    for product in answer["products"]:
        row = expected[product["product_id"]]
        assert product["esci_label"] == row["esci_label"]
        assert max(abs(product[f"p_{label}"] - row[f"p_{label}"]) for label in "ESCI") < 1e-5
    health = reranker["client"].get("/health").json()
    assert health["catalogue_rows"] == SAMPLE.products and len(health["catalogue_md5"]) == 32
    batch = {"queries": [{"query_embedding": embedding, "product_ids": product_ids, "top_k": 2}] * 2}
    results = reranker["client"].post("/rerank", json=batch).json()["results"]
    assert [[p["product_id"] for p in r] for r in results] == [[p["product_id"] for p in answer["products"][:2]]] * 2


def test_full_vectors_as_npy_get_the_pyfunc_probabilities(stack, reranker):
    _, embedding, product_ids = judged_query(stack)
    products = pq.read_table(stack["repo"] / "data" / "raw" / C.PRODUCT_FEATURES_FILE).to_pandas()
    products = products.set_index("product_id").loc[product_ids]
    rows = np.stack(
        [
            np.stack([embedding, text, image])
            for text, image in zip(products.clip_text_features, products.clip_image_features)
        ]
    ).astype(np.float32)
    body = io.BytesIO()
    np.save(body, rows)
    response = reranker["client"].post("/score", content=body.getvalue(), headers={"Content-Type": "application/x-npy"})
    assert response.status_code == 200, response.text
    expected = pyfunc_answers(stack, embedding, product_ids)
    for label in "ESCI":
        found = np.array(response.json()[f"p_{label}"])
        assert np.abs(found - [expected[p][f"p_{label}"] for p in product_ids]).max() < 1e-5


def _query(width: int = 768, value: float = 0.01) -> list:
    return [value] * width


@pytest.mark.parametrize(
    "body, status, message",
    [
        (
            {"query_embedding": _query(512), "product_ids": ["B000000001"]},
            422,
            r"must hold 768 numbers, found shape \[512\]",
        ),
        (
            '{"query_embedding": [NaN' + ", 0.1" * 767 + '], "product_ids": ["B000000001"]}',
            422,
            r"NaN or infinity at \[0\]",
        ),
        ({"query_embedding": _query(), "product_ids": []}, 422, "product_ids must be a non-empty list"),
        (
            {"query_embedding": _query(), "product_ids": ["nope", "gone"]},
            422,
            r"2 of 2 product ids are not in the catalogue \(\w+\): \['nope', 'gone'\]",
        ),
        (
            {"query_embedding": _query(), "product_ids": ["nope", "B000000001"], "strict": True},
            422,
            r"1 of 2 product ids are not in the catalogue \(\w+\) \(strict\): \['nope'\]",
        ),
        ("{not json", 400, "the body is not JSON"),
        ('{"query_embedding": [' + "0.1, " * 1_000_000 + "0.1]}", 413, "the body is over 4194304 bytes"),
    ],
    ids=["wrong-width", "nan", "empty", "no-known-id", "strict-unknown-id", "not-json", "too-large"],
)
def test_a_bad_request_gets_a_4xx_naming_the_problem_and_changes_nothing(reranker, body, status, message):
    before = reranker["client"].get("/health").json()
    content = body if isinstance(body, str) else json.dumps(body)
    response = reranker["client"].post("/rerank", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text[:500]
    assert re.search(message, response.json()["error"]), response.json()["error"]
    assert reranker["client"].get("/health").json() == before


def test_unknown_ids_are_named_and_the_known_ones_ranked(stack, reranker):
    _, embedding, product_ids = judged_query(stack)
    client = reranker["client"]
    known = client.post("/rerank", json={"query_embedding": embedding, "product_ids": product_ids}).json()
    mixed = ["NEW-1", *product_ids[:2], "NEW-2", *product_ids[2:]]
    found = client.post("/rerank", json={"query_embedding": embedding, "product_ids": mixed})
    assert found.status_code == 200, found.text
    assert found.json()["unknown_product_ids"] == ["NEW-1", "NEW-2"]
    assert found.json()["products"] == known["products"] and known["unknown_product_ids"] == []
    batch = {"queries": [{"query_embedding": embedding, "product_ids": mixed, "top_k": 1}] * 2}
    answer = client.post("/rerank", json=batch).json()
    assert answer["unknown_product_ids"] == [["NEW-1", "NEW-2"]] * 2 and len(answer["results"][1]) == 1


def test_without_the_token_the_answer_is_401(reranker):
    response = httpx.post(f"{reranker['url']}/rerank", json={"query_embedding": _query(), "product_ids": ["x"]})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(f"{reranker['url']}/score", content=b"", headers={"Authorization": "Bearer not-it"})
    assert wrong.status_code == 401


def test_metrics_parse_as_prometheus_text_with_counts_latency_and_version(stack, reranker):
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{reranker['url']}/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    counts = {
        (s.labels["path"], s.labels["status"]): s.value
        for s in families["rerank_requests"].samples
        if s.name.endswith("_total")
    }
    assert counts[("/rerank", "200")] >= 1 and counts[("/rerank", "401")] >= 1 and counts[("/rerank", "422")] >= 1
    assert families["rerank_unknown_product_ids"].samples[0].value >= 6  # the test above: 2 + 2 x 2
    assert families["rerank_catalogue_products"].samples[0].value == SAMPLE.products
    assert any(s.name == "rerank_request_seconds_count" for s in families["rerank_request_seconds"].samples)
    assert families["rerank_model_version"].samples[0].value == float(registry_state(stack)["champion"])
    access = [
        json.loads(line.split(" mmsearch.rerank.access ", 1)[1])
        for line in reranker["log"].read_text().splitlines()
        if " mmsearch.rerank.access " in line
    ]
    assert {"method", "path", "status", "ms", "model_version"} <= set(access[-1])


def test_a_champion_swap_under_load_fails_no_request_and_later_answers_name_the_new_version(stack, reranker):
    _, embedding, product_ids = judged_query(stack)
    body = json.dumps({"query_embedding": embedding, "product_ids": product_ids})
    answers, failures, stop = [], [], threading.Event()

    def client() -> None:
        with httpx.Client(base_url=reranker["url"], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
            while not stop.is_set():
                try:
                    response = http.post("/rerank", content=body)
                    answers.append(response.json()["model_version"] if response.is_success else response.status_code)
                except httpx.HTTPError as error:
                    failures.append(repr(error))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    move = """
        import json, mlflow
        client = mlflow.MlflowClient()
        old = client.get_model_version_by_alias("mmsearch-esci", "champion")
        new = mlflow.register_model(old.source, "mmsearch-esci", tags=old.tags)
        client.set_registered_model_alias("mmsearch-esci", "champion", new.version)
        print(json.dumps({"old": str(old.version), "new": str(new.version)}))
    """
    try:
        versions = in_ml_env(stack, move)
        deadline = time.monotonic() + 120
        while (not answers or answers[-1] != versions["new"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures and all(isinstance(a, str) for a in answers), (
        failures[:3],
        [a for a in answers if not isinstance(a, str)][:3],
    )
    assert answers[-1] == versions["new"] and versions["old"] in answers, answers[-5:]
    assert answers.index(versions["new"]) > 0
    restore = f"""
        import mlflow
        mlflow.MlflowClient().set_registered_model_alias("mmsearch-esci", "champion", "{versions["old"]}")
        print("{{}}")
    """
    in_ml_env(stack, restore)


# The catalogue follows the data: a product file pushed through DVC, the data path a team uses, is
# published by the next run's publish_catalogue and served within the service's poll, whatever
# that run's model becomes; a bad one never reaches the service. Last in the module: they change
# the DVC repository's data.

NEW_PRODUCT = "B0NEWPRODUCT"


def push_product_file(stack, change) -> str:
    """The DVC repository's product file changed by `change`, tracked and pushed; its md5."""
    from tests.helpers import dvc

    path = stack["repo"] / "data" / "raw" / C.PRODUCT_FEATURES_FILE
    table = change(pq.read_table(path))
    path.unlink()  # DVC may link its cache into the workspace: write a new file, never into the cached one
    pq.write_table(table, path)
    for args in (("add", "data/raw", "-q"), ("push", "-q")):
        result = dvc(stack["repo"], *args)
        assert result.returncode == 0, result.stderr
    from mmsearch.dvc_repo import file_digest

    return file_digest(path)


def test_a_product_added_to_the_data_is_ranked_once_published_with_the_same_champion(stack, reranker):
    import pyarrow as pa
    import pyarrow.compute as pc

    _, embedding, product_ids = judged_query(stack)
    champion = registry_state(stack)["champion"]
    body = {"query_embedding": embedding, "product_ids": [NEW_PRODUCT, *product_ids]}
    assert reranker["client"].post("/rerank", json=body).json()["unknown_product_ids"] == [NEW_PRODUCT]

    def with_new_product(table):  # a copy of the query's first judged product under a new id
        first = table.filter(pc.equal(table.column("product_id"), product_ids[0]))
        return pa.concat_tables([table, first.set_column(0, "product_id", pa.array([NEW_PRODUCT]))])

    md5 = push_product_file(stack, with_new_product)
    ranked_at, stop = [], threading.Event()

    def watch() -> None:  # what a search engine sees meanwhile: the first answer that ranks the new product
        with httpx.Client(base_url=reranker["url"], headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            while not stop.is_set() and not ranked_at:
                answer = http.post("/rerank", json=body).json()
                if any(p["product_id"] == NEW_PRODUCT for p in answer.get("products", [])):
                    ranked_at.append((time.time(), answer))
                time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        weak = dags_test(stack, WEAK, "2026-01-09T02:00:00+00:00")  # new data: it trains, and stays challenger
    finally:
        stop.set()
        watcher.join()
    assert weak["registry"]["aliases"] == ["challenger"] and registry_state(stack)["champion"] == champion
    published = json.loads((Path(weak["run_dir"]) / "publish" / "publish.json").read_text())
    assert published["published"] and published["md5"] == md5 and published["products"] == SAMPLE.products + 1
    assert ranked_at, "the new product was never ranked"
    seconds, answer = ranked_at[0][0] - datetime.fromisoformat(published["published_at"]).timestamp(), ranked_at[0][1]
    assert seconds <= 2 * 1.0, seconds  # within two polls (the fixture polls every second)
    assert answer["model_version"] == champion and answer["unknown_product_ids"] == []
    health = reranker["client"].get("/health").json()
    assert health["catalogue_md5"] == md5 and health["catalogue_origin"] == "published"
    assert health["catalogue_published_at"] == published["published_at"] and health["model_version"] == champion
    print(f"a new product ranked {seconds:.2f} s after it was published (poll 1 s)")


def test_a_bad_product_file_through_the_data_path_is_never_served(stack, reranker):
    import numpy as np
    import pyarrow as pa

    before = reranker["client"].get("/health").json()

    def with_nan(table):
        column = table.column("clip_text_features").combine_chunks()
        values = column.values.to_numpy().copy()
        values[5 * 768 + 1] = np.nan
        return table.set_column(1, "clip_text_features", pa.ListArray.from_arrays(column.offsets, pa.array(values)))

    push_product_file(stack, with_nan)
    result, log = run_dag(stack, FAST, "2026-01-10T02:00:00+00:00")
    assert "state=failed" in log
    failed = {f["task_id"]: f["reason"] for f in failures(stack, log)}
    assert failed["data.publish_catalogue"].endswith(
        "product_features.parquet: column 'clip_text_features': has NaN or infinite values "
        "(e.g. product_id 'B000000005' (row 5))"
    )
    time.sleep(2.5)  # two polls and more
    assert reranker["client"].get("/health").json() == before  # the last good catalogue, still served
    _, embedding, _ = judged_query(stack)
    answer = reranker["client"].post("/rerank", json={"query_embedding": embedding, "product_ids": [NEW_PRODUCT]})
    assert answer.status_code == 200 and answer.json()["products"][0]["product_id"] == NEW_PRODUCT
