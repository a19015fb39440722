"""Stage 1, pull: `dvc pull` of the raw data, verified by what is on disk, not by DVC's stdout.

`dvc pull` exits 1 yet restores what it could when an object is missing, and can say
"Everything is up to date" when the remote is gone. So after pulling, every file the
.dvc target lists must exist in the workspace and `dvc status` must be clean.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

DEFAULT_TARGET = "data/raw.dvc"


class PullError(RuntimeError):
    """The DVC pull did not restore every tracked file."""


def dvc_executable() -> str:
    beside = Path(sys.executable).parent / "dvc"
    found = str(beside) if beside.exists() else shutil.which("dvc")
    if not found:
        raise PullError("the dvc command is not installed in this environment")
    return found


def _dvc(repo_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([dvc_executable(), *args], cwd=repo_dir, capture_output=True, text=True, check=False)


def tracked_output(repo_dir: Path, target: str) -> tuple[Path, str]:
    """The workspace path and md5 that a .dvc file records."""
    spec = yaml.safe_load((repo_dir / target).read_text())
    out = spec["outs"][0]
    return (repo_dir / target).parent / out["path"], out["md5"]


def _cache_object(repo_dir: Path, md5: str) -> Path:
    result = _dvc(repo_dir, "cache", "dir")
    cache = Path(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else repo_dir / ".dvc" / "cache"
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def file_hashes(repo_dir: Path, target: str) -> dict[str, str]:
    """md5 of every tracked file, relative to the tracked directory (lineage for the registry)."""
    out_path, md5 = tracked_output(repo_dir, target)
    if not md5.endswith(".dir"):
        return {out_path.name: md5}
    listing = _cache_object(repo_dir, md5)
    if not listing.exists():
        raise PullError(f"{target}: the directory listing {md5} is not in the DVC cache (not pulled)")
    return {entry["relpath"]: entry["md5"] for entry in json.loads(listing.read_text())}


def missing_files(repo_dir: Path, target: str) -> list[str]:
    out_path, _ = tracked_output(repo_dir, target)
    try:
        hashes = file_hashes(repo_dir, target)
    except PullError:
        return [str(out_path.relative_to(repo_dir))]
    if len(hashes) == 1 and out_path.name in hashes:
        return [] if out_path.exists() else [str(out_path.relative_to(repo_dir))]
    return [str((out_path / rel).relative_to(repo_dir)) for rel in sorted(hashes) if not (out_path / rel).exists()]


def pull(repo_dir: Path, target: str = DEFAULT_TARGET, remote: str = "") -> dict:
    repo_dir = Path(repo_dir).resolve()
    if not (repo_dir / target).exists():
        raise PullError(f"{repo_dir / target}: DVC target is missing")
    args = ["pull", target] + (["--remote", remote] if remote else [])
    result = _dvc(repo_dir, *args)
    log.info("dvc %s exited %d\n%s%s", " ".join(args), result.returncode, result.stdout, result.stderr)
    missing = missing_files(repo_dir, target)
    status = _dvc(repo_dir, "status", "--json", target)
    changed = json.loads(status.stdout or "{}") if status.returncode == 0 else {"status": status.stderr.strip()}
    if missing or changed:
        said = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or [""])[-1]
        raise PullError(
            f"dvc pull of {target} from remote '{remote or 'default'}' did not restore "
            f"{len(missing)} file(s): {', '.join(missing[:5]) or 'none'}; dvc status: {json.dumps(changed) or 'clean'}; "
            f"dvc exit code {result.returncode}: {said}"
        )
    out_path, md5 = tracked_output(repo_dir, target)
    return {
        "raw_dir": str(out_path),
        "dvc_target": target,
        "dvc_md5": md5,
        "file_md5": file_hashes(repo_dir, target),
        "dvc_exit_code": result.returncode,
    }
