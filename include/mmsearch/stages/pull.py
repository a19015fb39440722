"""`dvc pull` of the raw data, verified by what is on disk, not by DVC's stdout.

`dvc pull` exits 1 yet restores what it could when an object is missing, and can say
"Everything is up to date" when the remote is gone. So after pulling, every file the
.dvc target lists must exist in the workspace and `dvc status` must be clean.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mmsearch import config, dvc_repo, paths
from mmsearch.dvc_repo import PullError

log = logging.getLogger(__name__)

DEFAULT_TARGET = "data/raw.dvc"


def _listing(repo_dir: Path, md5: str, remote: str) -> list[dict] | None:
    """The directory listing (.dir object): from the local cache, else from the remote."""
    from dvc.repo import Repo

    with Repo(str(repo_dir)) as repo:
        for odb in (repo.cache.local, repo.cloud.get_remote_odb(remote or None, "pull")):
            try:
                with odb.fs.open(odb.oid_to_path(md5)) as handle:
                    return json.load(handle)
            except (FileNotFoundError, OSError, ValueError):
                continue
    return None


def _missing_in_remote(repo_dir: Path, entries: list[dict], remote: str) -> list[str]:
    from dvc.repo import Repo

    with Repo(str(repo_dir)) as repo:
        odb = repo.cloud.get_remote_odb(remote or None, "pull")
        return [entry["relpath"] for entry in entries if not odb.exists(entry["md5"])]


def file_hashes(repo_dir: Path, target: str, remote: str = "") -> dict[str, str]:
    """md5 of every tracked file, relative to the tracked directory (lineage for the registry)."""
    out_path, md5 = dvc_repo.output(repo_dir / target)
    if not md5.endswith(".dir"):
        return {out_path.name: md5}
    entries = _listing(repo_dir, md5, remote)
    if entries is None:
        raise PullError(f"{target}: the directory listing {md5} is neither in the DVC cache nor in the remote")
    return {entry["relpath"]: entry["md5"] for entry in entries}


def missing_files(repo_dir: Path, target: str, hashes: dict[str, str] | None) -> list[str]:
    """Tracked files absent from the workspace, named relative to the repository
    (`hashes` from file_hashes; None when no listing could be read: all of it is missing)."""
    out_path, _ = dvc_repo.output(repo_dir / target)
    relative = str(out_path.relative_to(repo_dir))
    if hashes is None:
        return [relative]
    if len(hashes) == 1 and out_path.name in hashes:
        return [] if out_path.exists() else [relative]
    return [f"{relative}/{rel}" for rel in sorted(hashes) if not (out_path / rel).exists()]


def _explain(repo_dir: Path, target: str, remote: str) -> str:
    """Which tracked files the remote lacks: DVC leaves a directory out entirely if any is missing."""
    _, md5 = dvc_repo.output(repo_dir / target)
    entries = _listing(repo_dir, md5, remote) if md5.endswith(".dir") else None
    if entries is None:
        return "the remote has no listing for it"
    absent = _missing_in_remote(repo_dir, entries, remote)
    return f"missing from the remote: {', '.join(absent)}" if absent else "the remote has every object"


def describe_untracked(raw_dir: Path) -> dict:
    """Lineage for a raw directory given directly (not pulled through DVC): the md5 of each file,
    the hash DVC itself would record, so the registry never claims another dataset's hashes."""
    raw_dir = Path(raw_dir)
    files = sorted(p for p in raw_dir.rglob("*") if p.is_file())
    hashes = {str(path.relative_to(raw_dir)): dvc_repo.file_digest(path) for path in files}
    return dvc_repo.lineage(raw_dir, "", "not tracked by DVC (raw_data_dir)", hashes, None)


def pull(
    repo_dir: Path, target: str = DEFAULT_TARGET, remote: str = "", attempts: int = 3, wait_seconds: float = 2.0
) -> dict:
    """Pull with retries and exponential backoff (a flaky remote, another process holding
    DVC's lock), then fail naming what is missing."""
    import tenacity

    from mmsearch.io import with_backoff

    repo_dir = Path(repo_dir).resolve()
    if not (repo_dir / target).exists():
        raise PullError(f"{repo_dir / target}: DVC target is missing")
    failed = tenacity.retry_if_exception_type(PullError)
    return with_backoff(attempts, wait_seconds, 60, failed, "dvc pull failed")(_pull_once, repo_dir, target, remote)


def _pull_once(repo_dir: Path, target: str, remote: str) -> dict:
    args = ["pull", target] + (["--remote", remote] if remote else [])
    result = dvc_repo.run(repo_dir, *args)
    log.info("dvc %s exited %d\n%s%s", " ".join(args), result.returncode, result.stdout, result.stderr)
    try:
        hashes = file_hashes(repo_dir, target, remote)
    except PullError:
        hashes = None
    missing = missing_files(repo_dir, target, hashes)
    status = dvc_repo.run(repo_dir, "status", "--json", target)
    changed = json.loads(status.stdout or "{}") if status.returncode == 0 else {"status": status.stderr.strip()}
    if missing or changed:
        said = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or [""])[-1]
        raise PullError(
            f"dvc pull of {target} from remote '{remote or 'default'}' did not restore {', '.join(missing) or target} "
            f"({_explain(repo_dir, target, remote)}); dvc exit code {result.returncode}: {said}"
        )
    out_path, md5 = dvc_repo.output(repo_dir / target)
    return dvc_repo.lineage(out_path, target, md5, hashes, result.returncode)


def remember(lineage: dict) -> bool:
    """Record the files this pull brought; True when they differ from the last pull of the same
    directory (new data: the raw-data asset gets an event)."""
    import hashlib

    from mmsearch.io import read_json, write_json

    key = hashlib.sha256(lineage["raw_dir"].encode()).hexdigest()[:16]
    state = paths.mmsearch_home() / "state" / f"raw-data-{key}.json"
    previous = read_json(state)["file_md5"] if state.exists() else None
    if previous == lineage["file_md5"]:
        return False
    state.parent.mkdir(parents=True, exist_ok=True)
    write_json(state, {"raw_dir": lineage["raw_dir"], "file_md5": lineage["file_md5"]})
    log.info("raw data in %s %s", lineage["raw_dir"], "changed" if previous else "seen for the first time")
    return True


def _check_given_directory(raw_dir: Path) -> None:
    """A raw_data_dir that does not exist or holds no file: bad input, named, before any work."""
    from mmsearch.io import DataError

    if not raw_dir.is_dir():
        raise DataError(
            raw_dir,
            "raw_data_dir does not exist (or is not a directory): set it to the raw ESCI/SQID "
            "directory, or leave it empty to pull data/raw with DVC",
        )
    if not any(p.is_file() for p in raw_dir.rglob("*")):
        raise DataError(
            raw_dir,
            f"raw_data_dir holds no file: expected {paths.ESCI_FILE}, {paths.QUERY_FEATURES_FILE} "
            f"and {paths.PRODUCT_FEATURES_FILE}",
        )


def run(*, out_dir: Path | None = None, cfg: config.RunConfig, tags: dict) -> dict:
    """The raw data in `out_dir` (default: the configuration's `raw_dir`) and its lineage (the md5
    of every file): `dvc pull` of the DVC repository's `out_dir` (the bundled sample), `dvc update`
    of the files imported into it (`make real-data`), or, with `raw_data_dir` set, that directory
    described as it is. The repository is the `dvc_repo` setting's (default: this project)."""
    repo_dir, out_dir = cfg.repo_dir.resolve(), Path(out_dir or cfg.raw_dir).resolve()
    if cfg.raw_data_dir:
        _check_given_directory(out_dir)
        return describe_untracked(out_dir)
    target = str(out_dir.relative_to(repo_dir)) + ".dvc"
    if not (repo_dir / target).exists():
        from mmsearch import sources

        imports = sources.imported(out_dir)
        if imports:  # the public files, imported by `make real-data`
            log.info("dvc update of %d imported files in %s", len(imports), out_dir)
            return sources.update(repo_dir, out_dir, imports)
    log.info("dvc pull %s in %s (remote %s)", target, repo_dir, cfg.dvc_remote or "default")
    return pull(repo_dir, target=target, remote=cfg.dvc_remote, attempts=cfg.dvc_pull_attempts)
