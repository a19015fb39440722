"""The champion as a re-ranking service, end to end: `airflow dags test` registers a champion in
this module's own stack (a DVC repository with a local remote, MLflow's SQLite registry), the
service (mmsearch.rerank) serves it with the published catalogue, its answers are
checked against the registered pyfunc's; then the catalogue follows the data: a product file
pushed through DVC is published by the next run and ranked within two polls, whatever that run's
model becomes, and a bad one never reaches the service. No mocks."""

import io
import json
import re
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from mmsearch import features, paths
from mmsearch.config import DEFAULT_CANDIDATES
from tests.e2e.support import FAST, SAMPLE, WEAK, dags_test, failures, in_ml_env, registry_state, run_dag
from tests.helpers import ML_PYTHON

pytestmark = pytest.mark.e2e

# a short training of one candidate: a champion to serve (no baseline beats it significantly)
QUICK = {"epochs": 2, "steps_per_epoch": 20, "train_query_baseline": False, "candidates": [DEFAULT_CANDIDATES[0]]}


@pytest.fixture(scope="module")
def first_run(stack):
    return dags_test(stack, QUICK, "2026-02-01T02:00:00+00:00")


# The service of this stack's champion, with the catalogue the run published; its answers against the pyfunc's.

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
    command = [ML_PYTHON, "-m", "mmsearch.rerank", "--port", str(port), "--dvc-repo", str(stack["repo"])]
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
    judged = pq.read_table(raw_dir / paths.ESCI_FILE, columns=["query_id", "product_id"]).to_pandas()
    query_id = judged.query_id.value_counts().index[0]
    queries = pq.read_table(raw_dir / paths.QUERY_FEATURES_FILE).to_pandas().set_index("query_id")
    embedding = [float(v) for v in queries.loc[str(query_id), "clip_text_features"]]  # SQID's ids are strings
    return str(query_id), embedding, judged[judged.query_id == query_id].product_id.tolist()


def pyfunc_answers(stack, embedding: list, product_ids: list) -> dict:
    """The registered pyfunc's p_* for each (query, product) pair, from the raw product file."""
    code = f"""
        import json, mlflow, numpy as np, pandas as pd, pyarrow.parquet as pq
        ids = {product_ids!r}
        products = pq.read_table({str(stack["repo"] / "data" / "raw" / paths.PRODUCT_FEATURES_FILE)!r}).to_pandas()
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
    gains = {p: sum(features.ESCI_GAINS[label] * row[f"p_{label}"] for label in "ESCI") for p, row in expected.items()}
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
    products = pq.read_table(stack["repo"] / "data" / "raw" / paths.PRODUCT_FEATURES_FILE).to_pandas()
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
    assert response.json()["error"].startswith("a bearer token is required")
    wrong = httpx.post(f"{reranker['url']}/score", content=b"", headers={"Authorization": "Bearer not-it"})
    assert wrong.status_code == 401
    assert wrong.json()["error"].startswith("the bearer token is wrong: send the one the service was started with")


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

    path = stack["repo"] / "data" / "raw" / paths.PRODUCT_FEATURES_FILE
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
