"""validate: the contract checks, each bad input failing with the file, column and rows named."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmsearch import paths
from mmsearch.io import DataError
from mmsearch.stages import validate
from tests.helpers import SMALL, small_config


def test_good_input_reports_full_coverage(small_raw, tmp_path):
    result = validate.run(small_raw, out_dir=tmp_path / "out", cfg=small_config(), tags={})
    assert result["coverage"] == 1.0
    report = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert report["coverage"]["working_set_judgements"] == result["working_set_judgements"] > 0
    assert report["esci_rows"] > report["coverage"]["working_set_judgements"]  # rows outside the working set


def _rewrite(path, mutate):
    table = pq.read_table(path)
    pq.write_table(mutate(table), path)


def _set_column(table, name, array):
    return table.set_column(table.schema.get_field_index(name), name, array)


def _embeddings(table, name, change):
    column = table.column(name).combine_chunks()
    matrix = column.values.to_numpy().reshape(len(column), -1).copy()
    matrix = change(matrix)
    offsets = pa.array(np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32))
    return _set_column(table, name, pa.ListArray.from_arrays(offsets, pa.array(matrix.ravel().astype(np.float32))))


def _nan_in_row_3(matrix):
    matrix[3, 5] = np.nan
    return matrix


def _row_3(value):
    def change(matrix):
        matrix[3] = value
        return matrix

    return change


def _repeat_example(table, relabel: bool):
    """A working-set judgement again: under its own example_id (relabel: with a different label)."""
    working = np.flatnonzero(
        (table.column("product_locale").to_numpy(zero_copy_only=False) == "us")
        & (table.column("split").to_numpy(zero_copy_only=False) == "test")
        & (table.column("small_version").to_numpy() == 1)
    )
    again = table.slice(int(working[0]), 1)
    if relabel:
        label = {"E": "S"}.get(again.column("esci_label")[0].as_py(), "E")
        again = _set_column(again, "esci_label", pa.array([label]))
        again = _set_column(again, "example_id", pa.array([10**9], pa.int64()))
    return pa.concat_tables([table, again])


def _duplicate_first_key(table, same_embedding):
    extra = table.slice(0, 1)
    if not same_embedding:
        extra = _embeddings(extra, "clip_text_features", lambda m: m + 1)
    return pa.concat_tables([table, extra])


BAD_INPUTS = {
    "missing file": (paths.QUERY_FEATURES_FILE, lambda p: p.unlink(), "query_features.parquet: file is missing"),
    "empty file": (paths.ESCI_FILE, lambda p: p.write_bytes(b""), "file is empty (0 bytes)"),
    "not parquet": (
        paths.PRODUCT_FEATURES_FILE,
        lambda p: p.write_text("id,vec\n1,2\n"),
        "not a readable parquet file",
    ),
    "truncated": (
        paths.PRODUCT_FEATURES_FILE,
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        "not a readable parquet file",
    ),
    "zero rows": (paths.ESCI_FILE, lambda p: _rewrite(p, lambda t: t.slice(0, 0)), "has no rows"),
    "missing column": (
        paths.ESCI_FILE,
        lambda p: _rewrite(p, lambda t: t.drop_columns(["esci_label"])),
        "column 'esci_label': required column is missing",
    ),
    "embedding as strings": (
        paths.QUERY_FEATURES_FILE,
        lambda p: _rewrite(
            p,
            lambda t: _set_column(
                t, "clip_text_features", pa.array([str(v) for v in t.column("clip_text_features").to_pylist()])
            ),
        ),
        "column 'clip_text_features': must be a list of floats, found string",
    ),
    "wrong dimension": (
        paths.PRODUCT_FEATURES_FILE,
        lambda p: _rewrite(p, lambda t: _embeddings(t, "clip_image_features", lambda m: m[:, :-1])),
        f"column 'clip_image_features': embeddings must have {SMALL.dim} values, found [{SMALL.dim - 1}]",
    ),
    "NaN": (
        paths.PRODUCT_FEATURES_FILE,
        lambda p: _rewrite(p, lambda t: _embeddings(t, "clip_text_features", _nan_in_row_3)),
        "column 'clip_text_features': has NaN or infinite values (e.g. product_id 'B000000003' (row 3))",
    ),
    "zero vector": (
        paths.PRODUCT_FEATURES_FILE,
        lambda p: _rewrite(p, lambda t: _embeddings(t, "clip_image_features", _row_3(0.0))),
        "column 'clip_image_features': embeddings must have a norm within 10x of the data's median (1) "
        "(e.g. product_id 'B000000003' (row 3): norm 0)",
    ),
    "values of 1e30": (
        paths.QUERY_FEATURES_FILE,
        lambda p: _rewrite(p, lambda t: _embeddings(t, "clip_text_features", _row_3(1e30))),
        "column 'clip_text_features': embeddings must have a norm within 10x of the data's median (1) (e.g. query_id",
    ),
    "repeated example_id": (
        paths.ESCI_FILE,
        lambda p: _rewrite(p, lambda t: _repeat_example(t, relabel=False)),
        "column 'example_id': 1 example_ids repeat (e.g. example_id",
    ),
    "a pair judged twice": (
        paths.ESCI_FILE,
        lambda p: _rewrite(p, lambda t: _repeat_example(t, relabel=True)),
        "column 'product_id': 1 query-product pairs of the working set are judged more than once (e.g. query_id",
    ),
    "bad label": (
        paths.ESCI_FILE,
        lambda p: _rewrite(
            p, lambda t: _set_column(t, "esci_label", pa.array(["X"] + t.column("esci_label").to_pylist()[1:]))
        ),
        "column 'esci_label': values must be one of ['C', 'E', 'I', 'S'], found ['X'] (e.g. row 0",
    ),
    "bad split": (
        paths.ESCI_FILE,
        lambda p: _rewrite(p, lambda t: _set_column(t, "split", pa.array(["dev"] * t.num_rows))),
        "column 'split': values must be one of ['test', 'train'], found ['dev']",
    ),
    "conflicting duplicate keys": (
        paths.QUERY_FEATURES_FILE,
        lambda p: _rewrite(p, lambda t: _duplicate_first_key(t, same_embedding=False)),
        "column 'query_id': 1 duplicate keys with different embeddings",
    ),
    "low join coverage": (
        paths.PRODUCT_FEATURES_FILE,
        lambda p: _rewrite(p, lambda t: t.slice(0, t.num_rows // 2)),
        "join coverage",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_fails_with_a_specific_error_and_writes_nothing(case, raw_copy, tmp_path):
    relative, damage, message = BAD_INPUTS[case]
    damage(raw_copy / relative)
    out = tmp_path / "validate"
    with pytest.raises(DataError) as error:
        validate.run(raw_copy, out_dir=out, cfg=small_config(), tags={})
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def _stage_cli(raw_dir, out, stage: str = "validate") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mmsearch.cli", stage, "--raw-dir", str(raw_dir), "--out", str(out)]
    return subprocess.run([*cmd, "--set", f"embedding_dim={SMALL.dim}"], capture_output=True, text=True)


@pytest.mark.parametrize("stage", ["validate", "merge"])
@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_through_the_cli_exits_2_with_the_same_line(case, stage, raw_copy, tmp_path):
    """Each stage that reads the raw files is a command of its own: merge, run alone, refuses
    what validate refuses (a product file covering half the judgements among them)."""
    relative, damage, message = BAD_INPUTS[case]
    damage(raw_copy / relative)
    out = tmp_path / stage
    result = _stage_cli(raw_copy, out, stage)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mmsearch {stage}: error: ") and message in lines[0], lines
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_identical_duplicates_are_collapsed_with_a_warning(raw_copy, tmp_path, caplog):
    _rewrite(raw_copy / paths.QUERY_FEATURES_FILE, lambda t: _duplicate_first_key(t, same_embedding=True))
    result = validate.run(raw_copy, out_dir=tmp_path / "out", cfg=small_config(), tags={})
    report = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert report["identical_duplicates_collapsed"]["query_id"] == 1
    assert result["coverage"] == 1.0
    assert "1 duplicate query_id rows with identical embeddings" in caplog.text


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda frame: frame.drop(columns=["f3"]), "1 missing"),
        (lambda frame: frame.assign(**{f"f{SMALL.dim}": 0.0}), "1 extra"),
    ],
)
def test_legacy_csv_with_missing_or_extra_f_column(raw_copy, tmp_path, change, problem):
    import pandas as pd

    csv = raw_copy / paths.LEGACY_QUERY_CSV
    change(pd.read_csv(csv)).to_csv(csv, index=False)
    with pytest.raises(DataError, match=problem):
        validate.run(raw_copy, out_dir=tmp_path / "out", cfg=small_config(query_features_source="legacy_csv"), tags={})


def test_legacy_csv_is_a_query_feature_source(raw_copy, tmp_path):
    (raw_copy / paths.QUERY_FEATURES_FILE).unlink()
    result = validate.run(
        raw_copy, out_dir=tmp_path / "out", cfg=small_config(query_features_source="legacy_csv"), tags={}
    )
    assert result["coverage"] == 1.0


def test_cli_exits_2_with_one_line_on_stderr(raw_copy, tmp_path):
    (raw_copy / paths.QUERY_FEATURES_FILE).unlink()
    out = tmp_path / "out"
    result = _stage_cli(raw_copy, out)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "mmsearch validate: error:" in result.stderr and "query_features.parquet: file is missing" in result.stderr
    assert not out.exists()


def test_cli_help_lists_every_stage_module_and_the_tools():
    import pkgutil

    from mmsearch import stages

    result = subprocess.run([sys.executable, "-m", "mmsearch.cli", "--help"], capture_output=True, text=True)
    commands = result.stdout.split("{", 1)[1].split("}", 1)[0].split(",")
    modules = [module.name.replace("_", "-") for module in pkgutil.iter_modules(stages.__path__)]
    assert set(modules) <= set(commands), sorted(set(modules) - set(commands))
    assert {"sample-data", "ceiling", "run-dag", "bench", "stack", "champion"} <= set(commands)


def test_a_stage_pointed_at_a_missing_directory_fails_in_one_line(tmp_path):
    missing = tmp_path / "none" / "selection.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmsearch.cli",
            "evaluate",
            "--merged-dir",
            str(tmp_path / "none"),
            "--model",
            str(missing),
            "--baselines",
            str(tmp_path / "none" / "baselines.json"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"mmsearch evaluate: error: No such file or directory: {missing}"
