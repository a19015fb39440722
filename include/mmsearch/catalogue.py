"""The published catalogue: the newest product file that passed validation, stored as the arrays
the re-ranking service serves from, whatever version its model was trained on. The model follows
the champion alias; the catalogue follows the data (docs/design.md, The catalogue follows the data).

Under `$MMSEARCH_HOME/catalogue/`:

    <md5>/ids.npy, text.npy, image.npy   the product file's ids and CLIP vectors (float32 [rows, 768]),
                                         named by the file's md5, never changed; the service maps
                                         the vectors read-only (np.load's mmap_mode)
    <md5>/catalogue.json                 what was published: md5, products, rows, when, by which run
    published.json                       the catalogue.json of the one published now, replaced in one rename
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmsearch import paths, raw, sqid
from mmsearch.io import DataError, read_json

IDS, TEXT, IMAGE = "ids.npy", "text.npy", "image.npy"
MANIFEST = "catalogue.json"
POINTER = "published.json"


def catalogue_root() -> Path:
    return paths.mmsearch_home() / "catalogue"


def published(root: Path | None = None) -> dict | None:
    """The published catalogue's manifest with its directory (`path`, under `root`), or None when
    nothing was published yet."""
    root = Path(root or catalogue_root())
    pointer = root / POINTER
    if not pointer.exists():
        return None
    found = read_json(pointer)
    # relative in the file: the service may mount the shared volume at another path than the tasks
    return {**found, "path": str(root / found["md5"])}


def fill(product_file: Path, text: np.ndarray, image: np.ndarray) -> list[str]:
    """The product file's vectors, checked batch by batch (widths, finite values, null ids), into
    `text` and `image` (preallocated [rows, dim]); its ids, in file order."""
    table = sqid.FeatureTable(Path(product_file), "product_id", sqid.PRODUCT_EMBEDDINGS, sqid.PRODUCT_FEATURE_COLUMNS)
    ids: list[str] = []
    for offset, keys, matrices in sqid.embedding_batches(table, text.shape[1]):
        end = offset + len(keys)
        text[offset:end], image[offset:end] = (matrices[name] for name in sqid.PRODUCT_EMBEDDINGS)
        ids.extend(keys.to_pylist())
    return ids


def write_arrays(product_file: Path, directory: Path, dim: int) -> int:
    """The product file as the arrays a catalogue is served from, written into `directory`; its rows."""
    rows = raw.open_parquet(product_file).metadata.num_rows
    text, image = (
        np.lib.format.open_memmap(Path(directory) / name, mode="w+", dtype=np.float32, shape=(rows, dim))
        for name in (TEXT, IMAGE)
    )
    ids = fill(product_file, text, image)
    text.flush()
    image.flush()
    np.save(Path(directory) / IDS, np.array(ids, dtype=str))
    return rows


def open_arrays(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A published catalogue's ids (in memory) and vectors (mapped read-only: pages are read as
    requests touch them, and a swap does not hold two catalogues' vectors in the process)."""
    directory = Path(directory)
    ids = np.load(directory / IDS).astype(object)
    text, image = (np.load(directory / name, mmap_mode="r") for name in (TEXT, IMAGE))
    if text.shape != image.shape or len(text) != len(ids):
        shapes = f"ids {len(ids)}, text {list(text.shape)}, image {list(image.shape)}"
        raise DataError(directory, f"the published arrays do not agree ({shapes}): publish it again")
    return ids, text, image
