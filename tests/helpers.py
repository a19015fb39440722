"""Helpers shared by the test modules: isolated environments, small generated data, real DVC
repositories with local remotes. No mocks: every helper makes the real thing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from mmsearch import config, paths
from mmsearch.stack.settings import free_port_env
from mmsearch.tools.sample_data import SampleSpec, generate

REPO_ROOT = Path(__file__).resolve().parents[1]
ML_PYTHON = os.environ.get("MMSEARCH_ML_PYTHON", str(REPO_ROOT / ".venvs" / "ml" / "bin" / "python"))
SMALL = SampleSpec(queries=40, products=240, mean_judgements=12, topics=8, values=3, dim=16, seed=3)


def isolated_env(home: Path, **extra: str) -> dict:
    """This process's environment without its Airflow and MLflow settings, writing under `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_"))}
    env.update({"MMSEARCH_HOME": str(home), "AIRFLOW_HOME": str(home / "airflow"), **extra})
    return env


def stack_env(name: str, **extra: str) -> dict:
    """An isolated environment for `mmsearch stack`: a fresh home and a free port for every
    server. The home is not under pytest's base directory: as root, PostgreSQL runs as the
    `postgres` user, which must enter it, and each pytest session makes that directory 0700 again.
    The caller removes `MMSEARCH_HOME`'s parent (`running_stack` does)."""
    root = Path(tempfile.mkdtemp(prefix=f"mmsearch-test-{name}-"))
    root.chmod(0o711)
    return isolated_env(root / "home", **free_port_env(), **extra)


def small_config(**overrides) -> config.RunConfig:
    return config.RunConfig(embedding_dim=SMALL.dim, **overrides)


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


class MirrorServer:
    """A real HTTP server on 127.0.0.1 serving a directory as a data mirror does: HEAD and GET,
    Content-Length, and an ETag that changes with the file. Counts the body bytes it sends."""

    def __init__(self, root: Path):
        import http.server
        import select
        import threading

        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def end_headers(self):
                path = Path(self.translate_path(self.path))
                if path.is_file():
                    stat = path.stat()
                    self.send_header("ETag", f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"')
                super().end_headers()

            def copyfile(self, source, outputfile):
                # fsspec probes a URL with a GET and hangs up after the headers: count only bytes
                # a client waits for, not those a kernel buffer would have swallowed
                outputfile.flush()
                readable, _, _ = select.select([self.connection], [], [], 0.2)
                if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                    return
                for block in iter(lambda: source.read(1 << 16), b""):
                    try:
                        outputfile.write(block)
                    except (BrokenPipeError, ConnectionResetError):
                        return  # a client that read what it needed and hung up
                    server.bytes_sent += len(block)
                    server.requests.append((self.command, self.path, len(block)))

            def log_message(self, *args):
                pass

        self.bytes_sent = 0
        self.requests: list[tuple[str, str, int]] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> MirrorServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


PINNED = {  # each raw file: the source and the path it has upstream, as data/sources.yaml names them
    paths.ESCI_FILE: ("esci", "shopping_queries_dataset/shopping_queries_dataset_examples.parquet"),
    paths.QUERY_FEATURES_FILE: ("sqid", "data/query_features.parquet"),
    paths.PRODUCT_FEATURES_FILE: ("sqid", "data/product_features.parquet"),
}


def publish(mirror: Path, raw: Path, manifest: Path, revision: str = "r1", tamper: str = "") -> None:
    """Put `raw`'s files on the mirror at `revision`, the public layout, and pin them in `manifest`
    (`tamper`: a raw file whose pinned sha256 is wrong)."""
    import yaml

    from mmsearch import sources
    from mmsearch.dvc_repo import file_digest

    real = yaml.safe_load(sources.MANIFEST.read_text())
    spec = {"sources": {}, "files": []}
    for name, source in real["sources"].items():
        spec["sources"][name] = {**source, "revision": revision}
    for path, (source, upstream) in PINNED.items():
        served = mirror / real["sources"][source]["repository"] / revision / upstream
        served.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(raw / path, served)
        sha = file_digest(served, "sha256") if path != tamper else "0" * 64
        spec["files"].append(
            {"path": path, "source": source, "file": upstream, "size": served.stat().st_size, "sha256": sha}
        )
    manifest.write_text(yaml.safe_dump(spec))
