"""The re-ranking service: FastAPI on uvicorn, in the ML environment, started by `make serve`.

POST /rerank   {"query_embedding": [768 floats], "product_ids": [...], "top_k": n}, or
               {"queries": [such objects]}: each query's products by expected ESCI gain
POST /score    a `.npy` [n, 3, 768] float32 body (query, text, image): labels and p_*
GET  /health   the model version, the catalogue's rows and md5
GET  /metrics  Prometheus: latency and count by path and status, the model version

/rerank and /score want `Authorization: Bearer <token>` (MMSEARCH_RERANK_TOKEN). A thread polls
the registry every --poll-seconds; when the champion alias moves it loads the new version (and
its catalogue) beside the old one and swaps them in one assignment: a request holds the pair it
started with, so requests in flight finish on the old version.
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

from mmsearch import config as C
from mmsearch.stack import rerank
from mmsearch.stack.settings import RERANK_TOKEN_VARIABLE

log = logging.getLogger("mmsearch.rerank")
access_log = logging.getLogger("mmsearch.rerank.access")
PROTECTED = ("/rerank", "/score")


@dataclass(frozen=True)
class Served:
    champion: rerank.Champion
    catalogue: rerank.Catalogue


@dataclass
class Options:
    token: str
    model: str = rerank.REGISTERED_MODEL
    catalogue: Path | None = None
    dvc_repo: Path = C.REPO_ROOT
    poll_seconds: float = 30.0
    max_json_bytes: int = 4 << 20
    max_npy_bytes: int = 64 << 20


class Service:
    """What the app serves, and the registry poll that swaps it."""

    def __init__(self, options: Options):
        self.options = options
        self.cache = C.mmsearch_home() / "serving"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.served = self.load(None)
        self._stop = threading.Event()

    def load(self, current: Served | None) -> Served:
        """The champion and its catalogue; the catalogue read while the model downloads and converts."""
        version = rerank.champion_model_version(self.options.model)
        given = self.options.catalogue
        path, md5 = (given, "") if given else rerank.catalogue_path(version.tags, self.options.dvc_repo)
        same = current and current.catalogue.path == Path(path)
        with ThreadPoolExecutor(1) as pool:
            reading = None if same else pool.submit(rerank.Catalogue.load, path, md5)
            champion = rerank.load_champion(self.cache, version, self.options.model)
            catalogue = current.catalogue if same else reading.result()
        log.info("champion v%s with %d products from %s", champion.version, len(catalogue.ids), path)
        return Served(champion, catalogue)

    def poll_once(self) -> bool:
        named = rerank.champion_model_version(self.options.model).version
        if str(named) == self.served.champion.version:
            return False
        before = self.served.champion.version
        self.served = self.load(self.served)
        log.info("swapped champion v%s -> v%s", before, self.served.champion.version)
        return True

    def poll(self) -> None:
        while not self._stop.wait(self.options.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # the registry away or a bad version: keep serving the loaded one
                log.exception("registry poll failed; still serving v%s", self.served.champion.version)

    def start_polling(self) -> None:
        threading.Thread(target=self.poll, name="registry-poll", daemon=True).start()

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
        if not hmac.compare_digest(given.encode(), f"Bearer {options.token}".encode()):
            raise rerank.RequestError(401, "a bearer token is required: Authorization: Bearer <token>")
        limit = options.max_npy_bytes if request.url.path == "/score" else options.max_json_bytes
        if int(request.headers.get("content-length") or 0) > limit:
            raise rerank.RequestError(413, f"the body is over {limit} bytes")

    @app.exception_handler(rerank.RequestError)
    async def refused(request: Request, error: rerank.RequestError):
        response = reply({"error": str(error)}, error.status)
        if error.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.post("/rerank", dependencies=[Depends(guard)])
    async def rerank_endpoint(request: Request):
        served = app.state.service.served  # the pair this request finishes on, swap or not
        try:
            body = json.loads(await request.body())
        except ValueError as error:
            raise rerank.RequestError(400, f"the body is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise rerank.RequestError(422, "the body must be a JSON object")
        queries = body.get("queries", [body])
        if not isinstance(queries, list) or not queries:
            raise rerank.RequestError(422, "queries must be a non-empty list")
        ranked = rerank.rerank(served.champion, served.catalogue, queries)
        found = {"model_version": served.champion.version}
        return reply(found | ({"results": ranked} if "queries" in body else {"products": ranked[0]}))

    @app.post("/score", dependencies=[Depends(guard)])
    async def score_endpoint(request: Request):
        served = app.state.service.served
        return reply(rerank.score_vectors(served.champion, await request.body()))

    @app.get("/health")
    async def health():
        served = app.state.service.served  # one read: a swap cannot split the pair
        champion, catalogue = served.champion, served.catalogue
        return {"model_version": champion.version, "catalogue_rows": len(catalogue.ids), "catalogue_md5": catalogue.md5}

    @app.get("/metrics")
    async def metrics():
        version_gauge.set(float(app.state.service.served.champion.version))
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mmsearch.stack.rerank_app", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5002)
    parser.add_argument("--model", default=rerank.REGISTERED_MODEL, help="the registered model to serve")
    parser.add_argument("--catalogue", type=Path, help="a product file to serve (default: the champion's, by lineage)")
    parser.add_argument("--dvc-repo", type=Path, default=C.REPO_ROOT, help="the DVC repository whose cache holds it")
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
