"""The re-ranking service: FastAPI on uvicorn, in the ML environment, started by `make serve`.

POST /rerank   {"query_embedding": [768 floats], "product_ids": [...], "top_k": n, "strict": false},
               or {"queries": [such objects]}: each query's known products by expected ESCI gain,
               the ids the catalogue does not know listed apart (`unknown_product_ids`)
POST /score    a `.npy` [n, 3, 768] float32 body (query, text, image): labels and p_*
GET  /health   the model version; the catalogue's md5, rows, origin and when it was published
GET  /metrics  Prometheus: latency and count by path and status, unknown ids, the model version

/rerank and /score want `Authorization: Bearer <token>` (MMSEARCH_RERANK_TOKEN). A thread polls
every --poll-seconds: the registry's champion alias (the model follows the champion) and the
published catalogue (the catalogue follows the data). When either moved it loads the new one
beside the old and swaps the (model, catalogue) pair in one assignment: a request holds the pair
it started with, so requests in flight finish on what they started with.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mmsearch import config, paths
from mmsearch.rerank import RERANK_TOKEN_VARIABLE, service

log = logging.getLogger("mmsearch.rerank")
access_log = logging.getLogger("mmsearch.rerank.access")
PROTECTED = ("/rerank", "/score")


@dataclass(frozen=True)
class Served:
    champion: service.Champion
    catalogue: service.Catalogue


@dataclass
class Options:
    token: str
    model: str = config.REGISTERED_MODEL
    catalogue: Path | None = None
    dvc_repo: Path = paths.REPO_ROOT
    poll_seconds: float = 30.0
    max_json_bytes: int = 4 << 20
    max_npy_bytes: int = 64 << 20


class Service:
    """What the app serves, and the poll that swaps it."""

    def __init__(self, options: Options):
        self.options = options
        self.cache = paths.mmsearch_home() / "serving"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.served = self.load()
        self._stop = threading.Event()

    def load(self) -> Served:
        """The champion and its catalogue; the catalogue read while the model downloads and converts."""
        version = service.champion_model_version(self.options.model)
        source = service.catalogue_source(version.tags, self.options.dvc_repo, self.options.catalogue)
        with ThreadPoolExecutor(1) as pool:
            reading = pool.submit(service.Catalogue.load, source)
            champion = service.load_champion(self.cache, version, self.options.model)
            catalogue = reading.result()
        log.info(
            "champion v%s with %d products (%s, %s)", champion.version, len(catalogue.ids), source.origin, source.path
        )
        return Served(champion, catalogue)

    def follow_champion(self) -> bool:
        """A new champion version: loaded beside the served one, then swapped in."""
        version = service.champion_model_version(self.options.model)
        served = self.served
        if str(version.version) == served.champion.version:
            return False
        champion = service.load_champion(self.cache, version, self.options.model)
        source = service.catalogue_source(version.tags, self.options.dvc_repo, self.options.catalogue)
        same = source.path == served.catalogue.source.path
        catalogue = served.catalogue if same else service.Catalogue.load(source)
        self.served = Served(champion, catalogue)
        log.info("swapped champion v%s -> v%s", served.champion.version, champion.version)
        return True

    def follow_catalogue(self) -> bool:
        """A newly published catalogue: loaded beside the served one, then swapped in with the same model."""
        if self.options.catalogue:  # a file given by hand stays
            return False
        source = service.published_source()
        served = self.served
        if not source or source.md5 == served.catalogue.md5:
            return False
        self.served = Served(served.champion, service.Catalogue.load(source))
        before, now = served.catalogue, self.served.catalogue
        log.info("swapped catalogue %s (%d products) -> %s (%d)", before.md5, len(before.ids), now.md5, len(now.ids))
        return True

    def poll(self) -> None:
        while not self._stop.wait(self.options.poll_seconds):
            for step in (self.follow_champion, self.follow_catalogue):
                try:
                    step()
                except Exception:  # the registry away, a bad version or file: keep serving what is loaded
                    served = self.served
                    log.exception(
                        "%s failed; still serving v%s with catalogue %s",
                        step.__name__,
                        served.champion.version,
                        served.catalogue.md5,
                    )

    def start_polling(self) -> None:
        threading.Thread(target=self.poll, name="poll", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


class Recorded:
    """Pure ASGI middleware: each request's count, latency and access-log line. (Starlette's
    BaseHTTPMiddleware relays every body chunk through a stream: 18 of the 30 ms of a 9 MB .npy.)"""

    def __init__(self, app, record):
        self.app, self.record = app, record

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.record(scope["method"], scope["path"], status[0], time.perf_counter() - started)


def create_app(options: Options) -> FastAPI:
    registry = CollectorRegistry()
    requests = Counter("rerank_requests", "Requests by path and status", ["path", "status"], registry=registry)
    buckets = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
    latency = Histogram(
        "rerank_request_seconds", "Request latency by path", ["path"], buckets=buckets, registry=registry
    )
    version_gauge = Gauge("rerank_model_version", "The registered version answering", registry=registry)
    catalogue_gauge = Gauge("rerank_catalogue_products", "Products in the catalogue served", registry=registry)
    unknown_ids = Counter(
        "rerank_unknown_product_ids",
        "Candidate ids the catalogue did not know (left out of rankings)",
        registry=registry,
    )

    @asynccontextmanager
    async def lifespan(app):
        app.state.service = Service(options)
        app.state.service.start_polling()
        yield
        app.state.service.stop()

    app = FastAPI(title="mmsearch re-ranker", lifespan=lifespan, docs_url=None, redoc_url=None)

    def reply(body: dict, status: int = 200) -> Response:
        return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type="application/json")

    def record(method: str, path: str, status: int, seconds: float) -> None:
        known = path if path in (*PROTECTED, "/health", "/metrics") else "other"
        requests.labels(known, str(status)).inc()
        latency.labels(known).observe(seconds)
        service = getattr(app.state, "service", None)
        version = service and service.served.champion.version
        entry = {"method": method, "path": path, "status": status, "ms": round(seconds * 1000, 2)}
        access_log.info(json.dumps(entry | {"model_version": version}))

    app.add_middleware(Recorded, record=record)

    def guard(request: Request) -> None:
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer "):
            raise service.RequestError(401, "a bearer token is required: Authorization: Bearer <token>")
        if not hmac.compare_digest(given.encode(), f"Bearer {options.token}".encode()):
            raise service.RequestError(
                401, f"the bearer token is wrong: send the one the service was started with ({RERANK_TOKEN_VARIABLE})"
            )
        limit = options.max_npy_bytes if request.url.path == "/score" else options.max_json_bytes
        if int(request.headers.get("content-length") or 0) > limit:
            raise service.RequestError(413, f"the body is over {limit} bytes")

    @app.exception_handler(service.RequestError)
    async def refused(request: Request, error: service.RequestError):
        response = reply({"error": str(error)}, error.status)
        if error.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    # The handlers are `async` and run the model inline, on the event loop, one request at a time:
    # 100 candidates are ~0.6 ms of compute, below what a hand-off to FastAPI's thread pool costs,
    # and under the GIL a thread would not run two at once anyway. A heavier model would want plain
    # `def` handlers (the thread pool) and more processes (docs/serving.md).
    @app.post("/rerank", dependencies=[Depends(guard)])
    async def rerank_endpoint(request: Request):
        served = app.state.service.served  # the pair this request finishes on, swap or not
        try:
            body = json.loads(await request.body())
        except ValueError as error:
            raise service.RequestError(400, f"the body is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise service.RequestError(422, "the body must be a JSON object")
        queries = body.get("queries", [body])
        if not isinstance(queries, list) or not queries:
            raise service.RequestError(422, "queries must be a non-empty list")
        ranked = service.rerank(served.champion, served.catalogue, queries)
        unknown_ids.inc(sum(len(query["unknown_product_ids"]) for query in ranked))
        if "queries" not in body:
            return reply({"model_version": served.champion.version, **ranked[0]})
        return reply(
            {
                "model_version": served.champion.version,
                "results": [query["products"] for query in ranked],
                "unknown_product_ids": [query["unknown_product_ids"] for query in ranked],
            }
        )

    @app.post("/score", dependencies=[Depends(guard)])
    async def score_endpoint(request: Request):
        served = app.state.service.served
        return reply(service.score_vectors(served.champion, await request.body()))

    @app.get("/health")
    async def health():
        served = app.state.service.served  # one read: a swap cannot split the pair
        champion, catalogue = served.champion, served.catalogue
        return {
            "model_version": champion.version,
            "catalogue_rows": len(catalogue.ids),
            "catalogue_md5": catalogue.md5,
            "catalogue_origin": catalogue.source.origin,
            "catalogue_published_at": catalogue.source.published_at or None,
        }

    @app.get("/metrics")
    async def metrics():
        served = app.state.service.served
        version_gauge.set(float(served.champion.version))
        catalogue_gauge.set(len(served.catalogue.index))
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mmsearch.rerank", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5002)
    parser.add_argument("--model", default=config.REGISTERED_MODEL, help="the registered model to serve")
    parser.add_argument(
        "--catalogue", type=Path, help="a product file to serve, fixed (default: the published catalogue, followed)"
    )
    parser.add_argument(
        "--dvc-repo", type=Path, default=paths.REPO_ROOT, help="the DVC repository whose cache holds it"
    )
    parser.add_argument("--poll-seconds", type=float, default=30.0, help="how often the registry is asked")
    args = parser.parse_args(argv)
    token = os.environ.get(RERANK_TOKEN_VARIABLE)
    if not token:
        sys.exit(f"{RERANK_TOKEN_VARIABLE} is not set: the service wants a bearer token (make serve gives the stack's)")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    import uvicorn

    options = Options(token, args.model, args.catalogue, args.dvc_repo, args.poll_seconds)
    uvicorn.run(create_app(options), host=args.host, port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
