"""`make bench`: the DAG's stages at the real data's scale, measured the way the DAG runs them.

For each size (query-product pairs) it generates data with the real schemas, runs every stage
as the DAG does (the same `mmsearch` commands, each in its own environment and process), and
records wall time, rows per second, the peak resident memory of the stage's process tree
(sampled with psutil), and the output size; then the same arithmetic as the transform in plain
numpy (the floor), and the whole DAG through `airflow dags test` for the orchestration overhead.
Every stage's row count is checked against its input's. Results: a markdown table and a CSV
under $MMSEARCH_HOME/bench/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import psutil

from mmsearch import features, paths
from mmsearch.io import read_json
from mmsearch.tools.bench_report import quality_rows, summarise, write_report

# The real working set's proportions: 181,701 pairs, 8,956 queries, 164,900 products.
PAIRS_PER_QUERY = 181_701 / 8_956
PRODUCTS_PER_PAIR = 164_900 / 181_701


def _venv_bin(name: str) -> Path:
    return paths.REPO_ROOT / ".venvs" / name / "bin"


def run_measured(cmd: list[str], env: dict | None = None, interval: float = 0.1) -> dict:
    """Run a command; wall time and the peak summed RSS of it and all its descendants."""
    start = time.monotonic()
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, done = 0, threading.Event()

    def sample():
        nonlocal peak
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    done.set()
    sampler.join()
    seconds = time.monotonic() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({process.returncode}):\n{stderr[-3000:]}")
    return {"seconds": seconds, "peak_rss_mb": peak / 2**20, "stdout": stdout}


def _command(name: str, **options) -> list[str]:
    """`mmsearch <name> --an-option value ...`'s arguments."""
    return [name, *(item for key, value in options.items() for item in (f"--{key.replace('_', '-')}", str(value)))]


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20


def numpy_transform(merged_dir: Path, out_dir: Path, batch_rows: int = 2000) -> dict:
    """The transform's arithmetic in numpy and pyarrow (the floor), what `features.preprocessing_fn`
    computes: the query embedding's elementwise z-scores, the pair cosines raw and z-scored, and
    each embedding whitened by one PCA of the three (a covariance over the train rows, its
    eigendecomposition, a projection on the first components); statistics from the train split in
    one pass, then every split transformed; written as parquet."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(features.EMBEDDING_COLUMNS["query_product"])
    query = features.QUERY_EMBEDDING

    def batches(split):
        for path in sorted((Path(merged_dir) / split).glob("*.parquet")):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
                yield {c: batch.column(c).values.to_numpy().reshape(len(batch), -1) for c in columns}

    def cosines(m):
        unit = {c: m[c] / np.linalg.norm(m[c], axis=1, keepdims=True) for c in columns}
        return {name: (unit[left] * unit[right]).sum(1) for name, (left, right) in features.COSINES.items()}

    start = time.monotonic()
    n, sums, squares = 0, {}, {}
    outer, stacked_sum = 0, 0  # the whitening's covariance of the three embeddings, stacked
    for m in batches("train"):
        n += len(m[query])
        for key, values in [(query, m[query]), *cosines(m).items()]:
            sums[key] = sums.get(key, 0) + values.astype(np.float64).sum(0)
            squares[key] = squares.get(key, 0) + np.square(values, dtype=np.float64).sum(0)
        stacked = np.concatenate([m[c] for c in columns])
        outer = outer + (stacked.T @ stacked).astype(np.float64)
        stacked_sum = stacked_sum + stacked.sum(0, dtype=np.float64)
    mean = {k: sums[k] / n for k in sums}
    std = {k: np.sqrt(squares[k] / n - mean[k] ** 2) for k in sums}
    stacked_mean = stacked_sum / (3 * n)
    variances, vectors = np.linalg.eigh(outer / (3 * n) - np.outer(stacked_mean, stacked_mean))
    top = np.argsort(variances)[::-1][: features.whitened_width(len(stacked_mean))]
    whitening = (vectors[:, top] / np.sqrt(np.maximum(variances[top], 0) + 1e-12)).astype(np.float32)
    stacked_mean = stacked_mean.astype(np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = 0
    for split in paths.SPLITS:
        writer = None
        for m in batches(split):
            table = {query: ((m[query] - mean[query]) / std[query]).astype(np.float32)}
            for name, cosine in cosines(m).items():
                table[features.raw_cosine(name)] = cosine.astype(np.float32)
                table[name] = ((cosine - mean[name]) / std[name]).astype(np.float32)
            for c in columns:
                table[features.WHITENED[c]] = (m[c] - stacked_mean) @ whitening
            arrays = {
                name: pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), v.shape[1]) if v.ndim == 2 else pa.array(v)
                for name, v in table.items()
            }
            batch = pa.table(arrays)
            writer = writer or pq.ParquetWriter(out_dir / f"{split}.parquet", batch.schema, compression="none")
            writer.write_table(batch)
            rows += len(m[query])
        if writer:
            writer.close()
    return {"seconds": time.monotonic() - start, "rows": rows}


# The stages whose direct runs sum to what the DAG runs (candidate trainings are one row each).


def bench_size(pairs: int, root: Path, env: dict, e2e: bool, repeat: int = 1) -> tuple[list[dict], list[dict]]:
    """Generate once, then `repeat` passes, each the stages run directly and then the DAG: passes
    interleave so that a slow spell of the machine hits both sides, and the median is reported.
    Also returns the model quality of the last direct pass beside the baselines and the ceiling."""
    queries = max(10, round(pairs / PAIRS_PER_QUERY))
    products = max(100, round(pairs * PRODUCTS_PER_PAIR))
    work = root / f"pairs-{pairs}"
    shutil.rmtree(work, ignore_errors=True)
    raw, run = work / "raw", work / "run"
    measured: dict[str, list[dict]] = {}  # stage -> one record per pass
    quality: list[dict] = []

    def record(name, seconds, rows_in, peak_rss_mb=0.0, output_mb=0.0):
        measured.setdefault(name, []).append(
            {"seconds": seconds, "rows": rows_in, "peak_rss_mb": peak_rss_mb, "output_mb": output_mb}
        )

    def stage(name, environment, args, rows_in, out=None):
        """`mmsearch <args>` in that environment, as the DAG's task runs it; its result JSON."""
        result = run_measured([str(_venv_bin(environment) / "mmsearch"), *args], env)
        record(name, result["seconds"], rows_in, result["peak_rss_mb"], _size_mb(out) if out else 0.0)
        seconds, rate, peak = result["seconds"], rows_in / result["seconds"], result["peak_rss_mb"]
        print(f"  {name:<12} {seconds:8.1f} s  {rate:10.0f} rows/s  {peak:8.0f} MB", flush=True)
        return json.loads(result["stdout"]) if result["stdout"].strip() else {}

    print(f"pairs={pairs}: queries={queries} products={products}", flush=True)
    sizes = {"queries": queries, "products": products, "mean_judgements": round(PAIRS_PER_QUERY, 2)}
    generated = stage("generate", "airflow", _command("sample-data", out=raw, **sizes), 0, raw)
    n = generated["working_set_judgements"]
    measured["generate"][0]["rows"] = n

    def direct_pass(i: int) -> None:
        # each pass registers a model of its own: a champion left by the previous one would be scored too
        settings = ["--set", f"experiment_name=bench-{pairs}", "--set", f"registered_model_name=bench-{pairs}-r{i}"]
        tags = ["--tags", json.dumps({"dag_id": "bench", "run_id": f"bench-{pairs}-r{i}"})]
        shutil.rmtree(run, ignore_errors=True)  # a stage finding its output in place would skip its work
        raw_in, merged_in = {"raw_dir": raw}, {"merged_dir": run / "merged"}
        validate = _command("validate", **raw_in, out=run / "validate") + settings
        stage("validate", "airflow", validate, n, run / "validate")
        merge = _command("merge", **raw_in, out=run / "merged") + settings
        merged = stage("merge", "airflow", merge, n, run / "merged")
        split_rows = merged["split_rows"]
        transform = _command("transform", **merged_in, out=run / "transform") + settings
        transformed = stage("transform", "ml", transform, merged["rows"], run / "transform")
        beam = read_json(run / "transform" / "manifest.json")["beam_seconds"]
        record("transform (Beam)", beam, merged["rows"], measured["transform"][-1]["peak_rss_mb"])
        floor = numpy_transform(run / "merged", work / "numpy")
        record("numpy floor", floor["seconds"], floor["rows"], output_mb=_size_mb(work / "numpy"))
        shutil.rmtree(work / "numpy")
        transform_in = {"transform_dir": run / "transform"}
        planned = stage("candidates", "ml", _command("candidates", out=run) + settings + tags, 0)
        for candidate in planned:
            train = _command("train", **transform_in, out=run / "train", candidate=json.dumps(candidate))
            out = run / "train" / f"candidate-{candidate['index']}"
            stage(f"train [{candidate['index']}]", "ml", train + settings + tags, split_rows["train"], out)
        parent = {"parent_run_id": planned[0]["parent_run_id"]}
        baselines = _command("baselines", **transform_in, out=run / "baselines", **parent) + settings + tags
        stage("baselines", "ml", baselines, split_rows["train"], run / "baselines")
        trained = [str(run / "train" / f"candidate-{c['index']}" / "train.json") for c in planned]
        stage("select", "airflow", ["select", "--trained", *trained, "--out", str(run / "select"), *settings], 0)
        selection, fitted = run / "select" / "selection.json", run / "baselines" / "baselines.json"
        evaluate = _command("evaluate", model=selection, baselines=fitted, **merged_in, out=run / "evaluate")
        scores = stage("evaluate", "ml", evaluate + settings, split_rows["test"], run / "evaluate")
        register = _command("register", model=selection, scores=run / "evaluate" / "scores.json", out=run)
        register += settings + tags
        registered = stage("register", "ml", register, split_rows["test"])
        # the nightly extras: drift against a reference (here the same data: the work is the same)
        # and the rank DAG's stage, with the version just registered
        drift = _command("drift", **merged_in, reference_dir=run / "merged", out=run / "drift")
        stage("drift", "ml", drift + settings + tags, merged["rows"])
        rank = _command("rank", version=registered["registry"]["version"], out=run / "rank")
        stage("rank", "ml", rank + settings + tags, merged["rows"])
        ceiling = _command("ceiling", **raw_in, **merged_in)
        best = run_measured([str(_venv_bin("ml") / "mmsearch"), *ceiling], env)
        quality[:] = quality_rows(pairs, scores, json.loads(best["stdout"]), read_json(selection))
        rows_out, test_rows = transformed["rows_out"], scores["test_rows"]
        if not (n == merged["rows"] and split_rows == rows_out and split_rows["test"] == test_rows):
            raise RuntimeError(f"row counts differ between stages: {n}, {split_rows}, {rows_out}, {test_rows}")

    def dag_pass(i: int) -> None:
        from mmsearch.tools.run_dag import latest_run, task_seconds

        names = {"experiment_name": f"bench-{pairs}", "registered_model_name": f"bench-{pairs}-dag-r{i}"}
        conf = json.dumps({"raw_data_dir": str(raw), **names})
        airflow = str(_venv_bin("airflow") / "airflow")
        result = run_measured([airflow, "dags", "test", "mmsearch_training", "--conf", conf], env)
        record("airflow dags test", result["seconds"], n, result["peak_rss_mb"])
        tasks = task_seconds(latest_run(env)["run_id"], env)
        for task_id, seconds in tasks.items():
            record(f"task {task_id}", seconds, n)
        record("dags test outside tasks", result["seconds"] - sum(tasks.values()), n)
        print(f"  dags test  {result['seconds']:8.1f} s", flush=True)

    for i in range(repeat):
        direct_pass(i)
        if e2e:
            dag_pass(i)
    shutil.rmtree(work, ignore_errors=True)  # the figures are kept, the data are not
    return summarise(pairs, measured), quality


def main(sizes: list[int], e2e: bool = True, repeat: int = 1) -> dict:
    root = paths.mmsearch_home() / "bench"
    # a fresh Airflow and MLflow home: a champion left by an earlier bench would make register
    # re-score it, work the other sizes' runs do not do
    shutil.rmtree(root / "home", ignore_errors=True)
    env = {
        **os.environ,
        "MMSEARCH_HOME": str(root / "home"),
        "AIRFLOW_HOME": str(root / "home" / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(paths.REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PATH": f"{_venv_bin('airflow')}:{os.environ['PATH']}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    if e2e:
        subprocess.run(
            [str(_venv_bin("airflow") / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True
        )
    rows, quality = [], []
    for pairs in sizes:
        measured, scored = bench_size(pairs, root, env, e2e, repeat)
        rows += measured
        quality += scored
    report = write_report(rows, quality, root)
    print(report.read_text())
    return {"report": str(report), "csv": str(root / "bench.csv")}
