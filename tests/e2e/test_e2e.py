"""End to end, everything real: `airflow dags test` against a DVC remote in a temporary
directory, TensorFlow Transform on Beam, Keras, MLflow's SQLite registry; then the
champion loaded from another process. No mocks."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from mmsearch import features, paths
from mmsearch.config import DEFAULT_CANDIDATES
from tests import readme
from tests.e2e.support import FAST, WEAK, dags_test, failures, in_ml_env, registry_state, run_dag, run_dir_of
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
    assert "INFO mmsearch.stages.train: trained candidate-0" in log.read_text()
    assert "INFO:mmsearch." not in log.read_text()  # each line once, not again through the root logger


def test_dag_run_pulls_merges_and_registers_a_champion(stack, first_run):
    run_dir = Path(first_run["run_dir"])
    assert list(stack["cwd"].iterdir()) == []  # MLflow artifacts under MMSEARCH_HOME, not ./mlruns
    assert (stack["home"] / "mlflow" / "artifacts").is_dir()
    assert (stack["repo"] / "data" / "raw" / paths.ESCI_FILE).exists()  # brought back by dvc pull
    merged = pq.read_table(run_dir / "merged" / "train")
    assert {features.QUERY_EMBEDDING, features.PRODUCT_TEXT_EMBEDDING, features.PRODUCT_IMAGE_EMBEDDING} <= set(
        merged.schema.names
    )
    example_ids = [
        i
        for p in (run_dir / "merged").rglob("*.parquet")
        for i in pq.read_table(p, columns=["example_id"]).column("example_id").to_pylist()
    ]
    merged_rows = json.loads((run_dir / "merged" / "manifest.json").read_text())["rows"]
    assert len(example_ids) == len(set(example_ids)) == merged_rows  # one row per judgement
    for split in paths.SPLITS:
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
    assert len(first_run["candidates"]) == len(DEFAULT_CANDIDATES)  # the default grid, chosen on validation
    assert {row["components"] for row in first_run["candidates"]} == {32, 128}  # two widths of the representation
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
                          "parent_tags": parent.data.tags, "run_tags": run.data.tags}))
    """,
    )
    for name in ("batch_size", "epochs", "input_dim", "optimizer", "feature_set", "steps_per_epoch", "patience"):
        assert name in found["params"]
    components = int(found["params"]["components"])  # the whitened components the chosen candidate reads
    assert found["params"]["input_dim"] == str(3 * components + len(features.COSINES))
    assert re.search(rf"^\d +{components} +[0-9,]+ +0\.\d{{4}}", found["card"], re.M)  # what each candidate read
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
    candidates = [f"candidate-{i}" for i in range(len(DEFAULT_CANDIDATES))]
    assert found["children"] == ["baseline-query", *candidates]  # nested under the DAG run's
    assert found["parent_tags"]["selected_run_id"]
    assert found["kind"] == "custom_model_development"  # MLflow's UI opens it on its training runs
    assert re.search(r"^baseline_clip +0\.\d{4} \[", found["card"], re.M) and "promoted to champion" in found["card"]
    # MLflow's Source column: the stage, not the temporary script.py of an external-python task
    assert found["run_tags"]["mlflow.source.name"] == "mmsearch train"
    assert found["parent_tags"]["mlflow.source.name"] == "mmsearch candidates"
    assert found["run_tags"]["mlflow.source.git.commit"] == found["parent_tags"]["mlflow.source.git.commit"]
    assert "95 % interval" in found["card"]
    tags = found["tags"]
    assert tags["airflow_dag_id"] == "mmsearch_training" and tags["airflow_run_id"].startswith("manual__")
    assert (
        tags["feature_set"] == "query_product" and len(tags["git_commit"]) in (40, 7) or tags["git_commit"] == "unknown"
    )
    assert {"dvc_md5.raw", f"dvc_md5.{paths.ESCI_FILE}", f"dvc_md5.{paths.PRODUCT_FEATURES_FILE}"} <= set(tags)
    for candidate in candidates:
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
        assert printed.index("starting MLflow's UI on http://127.0.0.1:") < printed.index("MLflow UI    http")
        address = r"MLflow UI +(http://127\.0\.0\.1:\d+/#/experiments/\d+/runs\?workflowType=machine_learning)"
        runs_url = re.search(address, printed).group(1)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(runs_url)
            expect(page.get_by_text(first_run["run_id"]).first).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Evaluation runs")).to_have_count(0)  # the model-training view, not GenAI's
            expect(
                page.get_by_text(re.compile(r"^test \(")).first
            ).to_be_visible()  # the Dataset column: the split read
            page.screenshot(path=str(ARTIFACTS / "mlflow-ui-training-runs.png"))
            page.get_by_text(first_run["run_id"]).first.click()
            expect(page.get_by_text("The chosen model is").first).to_be_visible(timeout=30_000)
            expect(page.get_by_text("mmsearch candidates").first).to_be_visible()  # Source: the stage
            page.screenshot(path=str(ARTIFACTS / "mlflow-ui-parent-run.png"))
            version = runs_url.split("#")[0] + f"#/models/mmsearch-esci/versions/{first_run['registry']['version']}"
            page.goto(version)
            # the model card's test table, its columns apart (a markdown table's ran together)
            expect(page.get_by_text(re.compile(r"baseline_clip +0\.\d{4} \[")).first).to_be_visible(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "mlflow-ui-model-version.png"), full_page=True)
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
    header, *rows = result.stdout.strip().splitlines()[-5:]
    assert header.split() == ["esci_label", "p_E", "p_S", "p_C", "p_I"], result.stdout
    assert len(rows) == 4 and all(row.split()[1] in {"E", "S", "C", "I"} for row in rows), result.stdout


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
    # in MLflow: nested under the night's run, beside its candidates, the stage as its Source
    tags = in_ml_env(
        stack,
        f"""
        import json, mlflow
        night = f"tags.`airflow.run_id` = '{forced["run_id"]}'"
        runs = mlflow.search_runs(experiment_names=["mmsearch-esci"], output_format="list", filter_string=night)
        by_name = {{run.info.run_name: run for run in runs}}
        print(json.dumps({{"drift": by_name["drift"].data.tags, "parent": by_name["{forced["run_id"]}"].info.run_id}}))
        """,
    )
    assert tags["drift"]["mlflow.parentRunId"] == tags["parent"]
    assert (
        tags["drift"]["mlflow.source.name"] == "mmsearch drift" and len(tags["drift"]["mlflow.source.git.commit"]) == 40
    )


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
    import pyarrow as pa

    shifted = tmp_path / "raw"
    shutil.copytree(stack["repo"] / "data" / "raw", shifted)
    products = pq.read_table(shifted / paths.PRODUCT_FEATURES_FILE)
    column = products.column("clip_image_features").combine_chunks()
    values = column.values.to_numpy().reshape(len(column), -1) + np.float32(0.05)  # a new image encoder
    moved = pa.ListArray.from_arrays(column.offsets, pa.array(values.ravel()))
    pq.write_table(products.set_column(2, "clip_image_features", moved), shifted / paths.PRODUCT_FEATURES_FILE)
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
    import pyarrow as pa

    bad = tmp_path / "raw"
    shutil.copytree(stack["repo"] / "data" / "raw", bad)
    products = pq.read_table(bad / paths.PRODUCT_FEATURES_FILE)
    column = products.column("clip_image_features").combine_chunks()
    values = column.values.to_numpy().copy()
    values[7 * 768 + 3] = np.inf
    damaged = pa.ListArray.from_arrays(column.offsets, pa.array(values))
    pq.write_table(products.set_column(2, "clip_image_features", damaged), bad / paths.PRODUCT_FEATURES_FILE)
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
