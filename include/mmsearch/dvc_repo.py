"""DVC as the stages use it: its command, what its .dvc files record, file digests. `pull`
(the bundled sample, `dvc pull`) and `sources` (the public files, `dvc import-url` / `dvc update`)
both go through here."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import yaml


class PullError(RuntimeError):
    """DVC did not bring the data the repository tracks."""


def executable() -> str:
    beside = Path(sys.executable).parent / "dvc"
    found = str(beside) if beside.exists() else shutil.which("dvc")
    if not found:
        raise PullError("the dvc command is not installed in this environment")
    return found


def run(repo_dir: Path, *args: str, quiet: bool = True) -> subprocess.CompletedProcess:
    """A DVC command in `repo_dir`; `quiet=False` lets its progress bars through to the terminal."""
    return subprocess.run([executable(), *args], cwd=repo_dir, capture_output=quiet, text=True, check=False)


def check(repo_dir: Path, *args: str, quiet: bool = True) -> None:
    """A DVC command that must succeed: PullError with DVC's last line otherwise."""
    result = run(repo_dir, *args, quiet=quiet)
    if result.returncode != 0:
        said = ((result.stderr or "") + (result.stdout or "")).strip().splitlines() if quiet else []
        raise PullError(f"dvc {' '.join(args)} failed (exit {result.returncode}){': ' + said[-1] if said else ''}")


def lineage(raw_dir: Path, target: str, md5: str, file_md5: dict, exit_code: int | None, **more) -> dict:
    """The data's lineage, as every pull returns it: where it is, DVC's target and hash, each file's md5."""
    found = {"raw_dir": str(raw_dir), "dvc_target": target, "dvc_md5": md5, "file_md5": file_md5}
    return {**found, "dvc_exit_code": exit_code, **more}


def output(dvc_file: Path) -> tuple[Path, str]:
    """The workspace path and md5 a .dvc file records for its output."""
    out = yaml.safe_load(Path(dvc_file).read_text())["outs"][0]
    return Path(dvc_file).parent / out["path"], out["md5"]


def imported_url(dvc_file: Path) -> str | None:
    """The source URL of a `dvc import-url` file; None for a file that is not one, or absent."""
    if not Path(dvc_file).exists():
        return None
    deps = yaml.safe_load(Path(dvc_file).read_text()).get("deps") or []
    return deps[0]["path"] if deps else None


def file_digest(path: Path, algorithm: str = "md5") -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def cached_file(repo_dir: Path, md5: str) -> Path:
    """Where DVC 3's local cache keeps the file with this md5."""
    return Path(repo_dir) / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
