"""The published catalogue: the newest product file that passed validation, which the re-ranking
service serves whatever version its model was trained on. The model follows the champion alias;
the catalogue follows the data (docs/design.md, The catalogue follows the data).

Under `$MMSEARCH_HOME/catalogue/`:

    <md5>/product_features.parquet   a validated product file, named by its md5, never changed
    <md5>/catalogue.json             what was published: md5, products, when, by which run
    published.json                   the catalogue.json of the one published now, replaced in one rename
"""

from __future__ import annotations

from pathlib import Path

from mmsearch import config as C
from mmsearch.io import read_json

PRODUCTS_FILE = "product_features.parquet"
MANIFEST = "catalogue.json"
POINTER = "published.json"


def catalogue_root() -> Path:
    return C.mmsearch_home() / "catalogue"


def published(root: Path | None = None) -> dict | None:
    """The published catalogue's manifest with its file's `path` (resolved under `root`), or None
    when nothing was published yet."""
    root = Path(root or catalogue_root())
    pointer = root / POINTER
    if not pointer.exists():
        return None
    found = read_json(pointer)
    # relative in the file: the service may mount the shared volume at another path than the tasks
    return {**found, "path": str(root / found["md5"] / PRODUCTS_FILE)}
