"""The re-ranking service's figures in `make bench-stack`, on the running stack: the 182k-pair
bench's catalogue (164,900 products) loaded, start to ready, 100 candidates by id, 1,000 full
vectors as .npy, memory, a champion swap under load, one unknown candidate among 100, a newer
product file published under load; and the same pyfunc in-process, on the same rows."""

from __future__ import annotations

import functools
import io
import itertools
import json
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from mmsearch import config, paths
from mmsearch.rerank import RERANK_TOKEN_VARIABLE
from mmsearch.stack import components, processes
from mmsearch.stack.lifecycle import wait_for_answer
from mmsearch.stack.settings import free_port

EMBEDDINGS = ("query_embedding", "product_text_embedding", "product_image_embedding")


def request_rows(n: int, seed: int) -> np.ndarray:
    """[n, 3, 768] unit float32 vectors: CLIP embeddings' shape and scale."""
    vectors = np.random.default_rng(seed).standard_normal((n, len(EMBEDDINGS), 768)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=2, keepdims=True)


def in_process_rows_per_second(model_uri: str, seed: int, repeat: int) -> dict:
    """The same pyfunc, loaded in this process (run in the ML env): 100 and 1,000 rows as numpy
    arrays through its `probabilities` (what a batch job reading Parquet has)."""
    import mlflow

    python_model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    rates = {}
    for rows in (100, 1000):
        vectors = request_rows(rows, seed)
        matrices = {name: vectors[:, i] for i, name in enumerate(EMBEDDINGS)}
        score = functools.partial(python_model.probabilities, matrices)
        score()  # warm
        rates[f"arrays_{rows}"] = rows / statistics.median(_timed(score, 10 * repeat))
    return rates


def mmsearch_json(env: dict, *args: str) -> dict:
    """`mmsearch <args>` of this environment; its JSON result."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mmsearch"), *args], env=env, capture_output=True, text=True, timeout=900
    )
    if result.returncode != 0:
        raise RuntimeError(f"mmsearch {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


def _timed(call, count: int) -> list[float]:
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return timings


def _two_clients(call, count: int) -> float:
    """Seconds for two clients (threads, each its own connection) to send `count` requests each."""
    with ThreadPoolExecutor(2) as pool:
        started = time.perf_counter()
        list(pool.map(lambda _: [call() for _ in range(count)], range(2)))
        return time.perf_counter() - started


def _publish(raw_dir: Path, run_id: str) -> dict:
    """The product file of `raw_dir` published as the training DAG's publish_catalogue does."""
    from mmsearch.stages import publish

    return publish.publish({"raw_dir": str(raw_dir)}, config.RunConfig(), run_id)


def _with_new_product(raw_dir: Path, out: Path, product_id: str) -> Path:
    """A copy of `raw_dir`'s product file with one product more (the first one's vectors), streamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(raw_dir / paths.PRODUCT_FEATURES_FILE)
    target = out / paths.PRODUCT_FEATURES_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    batches = source.iter_batches(batch_size=8192)
    first = next(batches)
    with pq.ParquetWriter(target, source.schema_arrow) as writer:
        for batch in itertools.chain([first], batches):
            writer.write_batch(batch)
        key = first.schema.get_field_index("product_id")
        writer.write_batch(first.slice(0, 1).set_column(key, "product_id", pa.array([product_id])))
    return out


def _rss_peak(pid: int, stop: threading.Event, found: list) -> None:
    """The largest resident set of `pid` and its children, sampled every 20 ms until `stop`."""
    import psutil

    process = psutil.Process(pid)
    while not stop.is_set():
        tree = [process, *process.children(recursive=True)]
        found.append(sum(p.memory_info().rss for p in tree))
        time.sleep(0.02)


def reranking(settings, env: dict, raw_dir: Path, repeat: int) -> dict:
    """The re-ranker with `raw_dir`'s products published and loaded: start to ready, 100 candidates by
    id (one client's latency, two clients' rows/s, one unknown among 100), 1,000 full vectors as
    .npy, memory, a champion swap and a catalogue swap under load."""
    import httpx
    import pyarrow.parquet as pq

    catalogue = raw_dir / paths.PRODUCT_FEATURES_FILE
    _publish(raw_dir, "bench-stack")
    port = free_port()
    component = components.serving(replace(settings, serve_port=port), env)
    command = [*component.command, "--poll-seconds", "1"]
    started, url = time.monotonic(), f"http://{settings.host}:{port}"
    entry = processes.start("rerank-bench", command, component.env)
    wait_for_answer(f"{url}/health", "rerank-bench", entry, timeout=300)
    figures = {"rerank_start_to_ready_seconds": round(time.monotonic() - started, 1)}
    ids = np.asarray(pq.read_table(catalogue, columns=["product_id"]).column(0).to_pylist())
    rng = np.random.default_rng(3)
    query = request_rows(1, seed=4)[0, 0].tolist()
    candidates = [rng.choice(ids, 100, replace=False).tolist() for _ in range(64)]
    bodies = [json.dumps({"query_embedding": query, "product_ids": some}) for some in candidates]
    # the same requests with their last candidate replaced by an id the catalogue does not know
    mixed = [
        json.dumps({"query_embedding": query, "product_ids": [*some[:99], f"NEW{i}"]})
        for i, some in enumerate(candidates)
    ]
    npy = io.BytesIO()
    np.save(npy, request_rows(1000, seed=2))
    headers = {"Authorization": f"Bearer {component.env[RERANK_TOKEN_VARIABLE]}"}
    try:
        with (
            httpx.Client(base_url=url, timeout=60, headers=headers) as one,
            httpx.Client(base_url=url, timeout=60, headers=headers) as two,
        ):
            clients = itertools.cycle([one, two])
            counter = itertools.count()

            def by_id(client=None) -> httpx.Response:
                client = client or next(clients)
                return client.post("/rerank", content=bodies[next(counter) % len(bodies)]).raise_for_status()

            by_id(one)
            latencies = _timed(lambda: by_id(one), 300)
            figures["rerank_median_100_ids_ms"] = round(statistics.median(latencies) * 1000, 2)
            figures["rerank_p99_100_ids_ms"] = round(float(np.percentile(latencies, 99)) * 1000, 2)
            figures.update(_one_unknown(one, bodies, mixed))
            figures["rerank_rows_per_second_two_clients"] = round(2 * 200 * 100 / _two_clients(by_id, 200))
            score = lambda: one.post("/score", content=npy.getvalue()).raise_for_status()  # noqa: E731
            score()
            figures["score_npy_rows_per_second_1000_rows"] = round(1000 / statistics.median(_timed(score, 5 * repeat)))
            figures["rerank_memory_mb"] = processes.memory_mb({"rerank": entry})["rerank"]
            figures.update(_swap_under_load(env, url, by_id))
            figures.update(_catalogue_swap_under_load(url, by_id, entry, raw_dir, len(ids)))
    finally:
        processes.stop("rerank-bench")
    return figures


def _one_unknown(client, bodies: list[str], mixed: list[str]) -> dict:
    """100 known candidates against 99 known and one unknown, the two requests alternating (300 each)."""
    import httpx

    timings: dict[str, list[float]] = {"known": [], "mixed": []}
    for number in range(300):
        for kind, body in (("known", bodies[number % len(bodies)]), ("mixed", mixed[number % len(mixed)])):
            started = time.perf_counter()
            answer = client.post("/rerank", content=body)
            timings[kind].append(time.perf_counter() - started)
            if answer.status_code != 200 or (kind == "mixed" and len(answer.json()["products"]) != 99):
                raise httpx.HTTPError(f"a request with one unknown id got {answer.status_code}: {answer.text[:300]}")
    known, with_unknown = (statistics.median(timings[k]) * 1000 for k in ("known", "mixed"))
    return {
        "rerank_median_100_known_ms": round(known, 2),
        "rerank_median_99_known_1_unknown_ms": round(with_unknown, 2),
        "rerank_one_unknown_over_all_known": round(with_unknown / known, 2),
    }


def _catalogue_swap_under_load(url: str, by_id, entry: dict, raw_dir: Path, products: int) -> dict:
    """A product file with one product more published while two clients send requests: failed
    requests, seconds from its publishing to the service serving it, and the service's peak memory
    during the swap against one catalogue's matrices."""
    import httpx

    newer = _with_new_product(raw_dir, raw_dir.parent / "raw-newer", "B0BENCHNEW0")
    failures, answered, stop, sampling, rss = [], [], threading.Event(), threading.Event(), []

    def client() -> None:
        while not stop.is_set():
            try:
                by_id()
                answered.append(time.monotonic())
            except httpx.HTTPError as error:
                failures.append(str(error))

    threads = [threading.Thread(target=client) for _ in range(2)]
    threads.append(threading.Thread(target=_rss_peak, args=(entry["pid"], sampling, rss)))
    for thread in threads:
        thread.start()
    before = httpx.get(f"{url}/health").json()["catalogue_md5"]
    published = _publish(newer, "bench-stack-newer")
    done = time.monotonic()
    while httpx.get(f"{url}/health").json()["catalogue_md5"] != published["md5"] and time.monotonic() - done < 120:
        time.sleep(0.05)
    served = time.monotonic() - done
    time.sleep(2)  # the old catalogue released once its last requests end
    stop.set()
    sampling.set()
    for thread in threads:
        thread.join()
    one_catalogue_mb = products * 2 * 768 * 4 / 1e6
    return {
        "catalogue_swap_failed_requests": len(failures),
        "catalogue_swap_requests_during": len(answered),
        "catalogue_swap_seconds_published_to_served": round(served, 2),
        "catalogue_swap_changed": before != published["md5"],
        "catalogue_mb": round(one_catalogue_mb),
        "catalogue_swap_peak_rss_mb": round(max(rss) / 1e6),
        "catalogue_swap_peak_over_one_catalogue": round(max(rss) / 1e6 / one_catalogue_mb, 2),
    }


def _swap_under_load(env: dict, url: str, by_id) -> dict:
    """The champion's version registered again as a new version and the alias moved to it while
    two clients send requests: failed requests, and how long until answers named the new version."""
    import httpx

    failures, versions, stop = [], [], threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                versions.append(by_id().json()["model_version"])
            except httpx.HTTPError as error:
                failures.append(str(error))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    name = config.REGISTERED_MODEL
    code = (
        "import mlflow, json; c = mlflow.MlflowClient(); "
        f"v = c.get_model_version_by_alias({name!r}, 'champion'); "
        f"n = mlflow.register_model(v.source, {name!r}, tags=v.tags); "
        f"c.set_registered_model_alias({name!r}, 'champion', n.version); print(n.version)"
    )
    moved = time.monotonic()
    new = subprocess.run([paths.ml_python(), "-c", code], env=env, capture_output=True, text=True)
    if new.returncode != 0:
        raise RuntimeError(f"registering the champion again failed: {new.stderr[-2000:]}")
    new_version = new.stdout.strip().splitlines()[-1]
    while time.monotonic() - moved < 120 and (not versions or versions[-1] != new_version):
        time.sleep(0.1)
    swapped = time.monotonic() - moved
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join()
    return {
        "swap_failed_requests": len(failures),
        "swap_requests_during": len(versions),
        "swap_seconds_to_new_version": round(swapped, 1),
        "swap_answers_name_new_version": versions[-1] == new_version,
    }


def in_process(env: dict, repeat: int) -> dict:
    """The champion's pyfunc in-process (the ML env), scoring numpy arrays (100 and 1,000 rows)
    and the lists a JSON parser makes of 1,000 rows."""
    code = (
        "from mmsearch.tools.bench_serving import in_process_rows_per_second as f; "
        f"import json; print(json.dumps(f('models:/{config.REGISTERED_MODEL}@champion', 2, {repeat})))"
    )
    out = subprocess.run([paths.ml_python(), "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
