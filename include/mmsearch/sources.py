"""The public data, imported with `dvc import-url` (`make real-data`) and refreshed with `dvc update`.

`data/sources.yaml` pins each file: its upstream URL at a fixed revision, its size and its sha256
(from the file's Git LFS pointer). Importing stages every download apart, checks it, and only
then replaces what `data/raw` held, so a failed or refused import leaves `data/raw` as it was.
Each file gets its own `.dvc` file recording its URL, the server's checksum (ETag) and its md5:
`dvc update` then downloads only what changed upstream.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from mmsearch import dvc_repo, paths
from mmsearch.dvc_repo import PullError
from mmsearch.io import DataError

log = logging.getLogger(__name__)

MANIFEST = paths.REPO_ROOT / "data" / "sources.yaml"
STAGING = "import-staging"  # beside data/raw; not a dot directory, which DVC does not look into
MIRROR_LAYOUT = "{base}/{repository}/{revision}/{file}"


@dataclass(frozen=True)
class SourceFile:
    """One public file: where it goes under the raw directory, where it comes from, what it must be."""

    path: str
    url: str
    size: int
    sha256: str


def load_manifest(manifest: Path = MANIFEST, base_url: str = "") -> list[SourceFile]:
    """The pinned files; with `base_url`, their URLs on a mirror of the same layout."""
    spec = yaml.safe_load(Path(manifest).read_text())
    files = []
    for entry in spec["files"]:
        source = spec["sources"][entry["source"]]
        fields = {"repository": source["repository"], "revision": source["revision"], "file": entry["file"]}
        url = MIRROR_LAYOUT.format(base=base_url.rstrip("/"), **fields) if base_url else source["url"].format(**fields)
        files.append(SourceFile(entry["path"], url, int(entry["size"]), str(entry["sha256"]).lower()))
    return files


def check_reachable(files: list[SourceFile], timeout: float = 30.0) -> None:
    """A HEAD request per URL, before anything is downloaded or moved: one line naming the first
    URL that does not answer, or answers with another size than the pinned one."""
    import requests

    for source in files:
        try:
            response = requests.head(source.url, allow_redirects=True, timeout=timeout)
        except requests.RequestException as error:
            reason = str(error).splitlines()[0][:200] if str(error) else ""
            raise PullError(f"{source.url} is unreachable: {type(error).__name__} {reason}".rstrip()) from None
        if response.status_code != 200:
            raise PullError(f"{source.url} is unreachable: HTTP {response.status_code} {response.reason}")
        length = response.headers.get("Content-Length")
        if length is not None and int(length) != source.size:
            raise DataError(source.url, f"the server offers {int(length):,} bytes, the pinned file has {source.size:,}")


def verify(path: Path, source: SourceFile) -> None:
    """The downloaded file is the pinned one: its size, then its sha256."""
    size = path.stat().st_size
    if size != source.size:
        raise DataError(source.url, f"downloaded {size:,} bytes, the pinned file has {source.size:,}; refused")
    found = dvc_repo.file_digest(path, "sha256")
    if found != source.sha256:
        raise DataError(source.url, f"sha256 {found} is not the pinned {source.sha256}; refused")


def import_all(repo_dir: Path, raw_rel: str = "data/raw", manifest: Path = MANIFEST, base_url: str = "") -> dict:
    """Import every pinned file into `raw_rel`; a file already imported from the same URL stays.

    Downloads go to a staging directory first and are checked there; `raw_rel` changes only once
    every file passed (the bundled sample, a directory tracked by `raw_rel`.dvc, is untracked
    then: `git checkout` of that .dvc file and `dvc checkout` bring it back)."""
    repo_dir = Path(repo_dir).resolve()
    raw_dir, staging = repo_dir / raw_rel, (repo_dir / raw_rel).parent / STAGING
    files = load_manifest(manifest, base_url)
    wanted = [s for s in files if dvc_repo.imported_url(raw_dir / f"{s.path}.dvc") != s.url]
    check_reachable(wanted)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for source in wanted:
            staged = staging / source.path
            staged.parent.mkdir(parents=True, exist_ok=True)
            log.warning("importing %s (%s bytes)", source.url, f"{source.size:,}")
            dvc_repo.check(repo_dir, "import-url", source.url, str(staged.relative_to(repo_dir)), quiet=False)
            verify(staged, source)
    except BaseException:
        _discard(repo_dir, staging)
        raise
    _switch(repo_dir, raw_rel, staging, wanted)
    unchanged = sorted(s.path for s in files if s not in wanted)
    return {"raw_dir": str(raw_dir), "imported": {s.path: s.url for s in wanted}, "unchanged": unchanged}


def _discard(repo_dir: Path, staging: Path) -> None:
    """Forget a staged import: its .dvc files and downloads (the DVC cache keeps the objects)."""
    for dvc_file in staging.rglob("*.dvc"):
        dvc_file.unlink()
    shutil.rmtree(staging, ignore_errors=True)


def _switch(repo_dir: Path, raw_rel: str, staging: Path, wanted: list[SourceFile]) -> None:
    raw_dir = repo_dir / raw_rel
    if (repo_dir / f"{raw_rel}.dvc").exists():
        dvc_repo.check(repo_dir, "remove", f"{raw_rel}.dvc")  # the bundled sample: untracked, still in the cache
        shutil.rmtree(raw_dir, ignore_errors=True)
    for source in wanted:
        target = raw_dir / source.path
        if target.with_name(target.name + ".dvc").exists():
            dvc_repo.check(repo_dir, "remove", str(target.relative_to(repo_dir)) + ".dvc")
            target.unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = str((staging / source.path).relative_to(repo_dir))
        dvc_repo.check(repo_dir, "move", staged, str(target.relative_to(repo_dir)))
    shutil.rmtree(staging, ignore_errors=True)


def imported(raw_dir: Path) -> list[Path]:
    """The import .dvc files under a raw directory (those with a source URL)."""
    return sorted(p for p in Path(raw_dir).rglob("*.dvc") if dvc_repo.imported_url(p))


def update(repo_dir: Path, raw_dir: Path, dvc_files: list[Path]) -> dict:
    """`dvc pull` (a fresh clone: fetches what the workspace lacks), then `dvc update`: a file
    whose upstream checksum is unchanged is not downloaded. Returns the data's lineage."""
    repo_dir, raw_dir = Path(repo_dir).resolve(), Path(raw_dir).resolve()
    targets = [str(p.relative_to(repo_dir)) for p in dvc_files]
    recorded = {t: dvc_repo.output(repo_dir / t) for t in targets}  # (workspace path, md5) before the update
    absent = [t for t, (out, _) in recorded.items() if not out.exists()]
    if absent:  # `dvc pull` of an import downloads it again even when present: only what is absent
        dvc_repo.check(repo_dir, "pull", *absent)
    dvc_repo.check(repo_dir, "update", *targets)
    hashes, sources, changed = {}, {}, []
    for target in targets:
        out, md5 = dvc_repo.output(repo_dir / target)
        if not out.exists():
            raise PullError(f"dvc update of {target} did not restore {out.relative_to(repo_dir)}")
        relative = str(out.relative_to(raw_dir))
        hashes[relative], sources[relative] = md5, dvc_repo.imported_url(repo_dir / target)
        if md5 != recorded[target][1]:
            changed.append(relative)
    log.info("dvc update: %s", f"changed upstream: {', '.join(changed)}" if changed else "nothing changed upstream")
    combined = hashlib.md5("".join(f"{k}:{v}\n" for k, v in sorted(hashes.items())).encode()).hexdigest()
    return dvc_repo.lineage(raw_dir, ", ".join(targets), combined, hashes, 0, sources=sources, updated=changed)
