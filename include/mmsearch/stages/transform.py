"""TensorFlow Transform on Apache Beam, in TFX's output layout.

    <out>/transform_graph/transform_fn/            the transform graph (tft_beam.WriteTransformFn)
    <out>/transform_graph/transformed_metadata/    schema of the transformed features
    <out>/transform_graph/metadata/                the raw schema (WriteTransformFn omits it)
    <out>/transformed_examples/Split-<split>/      tf.Example TFRecords, one directory per split
    <out>/manifest.json                            rows in and out per split

Beam is fed Arrow record batches read from the merged parquet row groups by our own
DoFn (40x faster than per-row dicts). The statistics are analysed on the train split
only, and every split is read again for the transform pass rather than held between
the passes, which keeps memory flat in the number of rows.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa

from mmsearch import config, features, paths
from mmsearch.io import atomic_dir, read_json, write_json
from mmsearch.raw import parquet_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def to_tfxio_batch(batch: pa.RecordBatch, columns) -> pa.RecordBatch:
    """tfx_bsl's dense adapter takes list columns: rebuild fixed-size lists (zero-copy), wrap scalars."""
    arrays, names = [], []
    for name in columns:
        column = batch.column(name)
        if pa.types.is_fixed_size_list(column.type):
            offsets = pa.array(range(0, (len(column) + 1) * column.type.list_size, column.type.list_size), pa.int32())
            column = pa.ListArray.from_arrays(offsets, column.values)
        elif not pa.types.is_list(column.type):
            column = pa.ListArray.from_arrays(pa.array(range(len(column) + 1), pa.int32()), column)
        arrays.append(column)
        names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names)


def tensor_adapter_config(embedding_columns, dim: int):
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx_bsl.tfxio import tensor_adapter

    fields = [pa.field(name, pa.list_(pa.float32())) for name in embedding_columns]
    fields.append(pa.field(features.LABEL, pa.list_(pa.int64())))
    representations = {}
    for name, shape in [(n, [dim]) for n in embedding_columns] + [(features.LABEL, [])]:
        rep = schema_pb2.TensorRepresentation()
        rep.dense_tensor.column_name = name
        for size in shape:
            rep.dense_tensor.shape.dim.add().size = size
        representations[name] = rep
    return tensor_adapter.TensorAdapterConfig(pa.schema(fields), representations)


def examples_dir(transform_dir: Path, split: str) -> Path:
    return Path(transform_dir) / "transformed_examples" / f"Split-{split}"


def graph_dir(transform_dir: Path) -> Path:
    return Path(transform_dir) / "transform_graph"


def _build_pipeline(pipeline, merged_dir, out, embedding_columns, dim, cfg):
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam

    columns = [*embedding_columns, features.LABEL]
    adapter = tensor_adapter_config(embedding_columns, dim)

    class ReadRecordBatches(beam.DoFn):
        """Parquet row groups straight to Arrow record batches (no per-row Python objects)."""

        def __init__(self, split):
            self.rows = beam.metrics.Metrics.counter("mmsearch", f"rows_in_{split}")

        def process(self, path):
            for batch in parquet_file(path).iter_batches(batch_size=cfg.transform_batch_rows, columns=columns):
                self.rows.inc(batch.num_rows)
                yield to_tfxio_batch(batch, columns)

    def read(split, purpose):
        return (
            pipeline
            | f"List{purpose}{split}"
            >> beam.Create(sorted(str(p) for p in (Path(merged_dir) / split).glob("*.parquet")))
            | f"Read{purpose}{split}" >> beam.ParDo(ReadRecordBatches(f"{purpose.lower()}_{split}"))
        )

    transform_fn = (read("train", "Analyse"), adapter) | "Analyse" >> tft_beam.AnalyzeDataset(features.preprocessing_fn)
    for split in paths.SPLITS:
        transformed = (
            (read(split, "Transform"), adapter),
            transform_fn,
        ) | f"Transform{split}" >> tft_beam.TransformDataset(output_record_batches=True)
        rows_out = beam.metrics.Metrics.counter("mmsearch", f"rows_out_{split}")

        def count(example, counter=rows_out):
            counter.inc()
            return example

        (
            transformed
            | f"Encode{split}" >> tft_beam.EncodeTransformedDataset()
            | f"Count{split}" >> beam.Map(count)
            | f"Write{split}"
            >> beam.io.WriteToTFRecord(
                str(examples_dir(out, split) / "transformed_examples"), file_name_suffix=".tfrecord"
            )
        )
    _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(str(graph_dir(out)))


def transform(merged_dir: Path, out_dir: Path, cfg: config.RunConfig) -> dict:
    """Run the Beam pipeline; write TFX's layout into out_dir atomically, with row counts."""
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    merged = read_json(Path(merged_dir) / "manifest.json")
    embedding_columns, dim = merged["embedding_columns"], merged["embedding_dim"]
    with atomic_dir(out_dir) as out:
        pipeline = beam.Pipeline(options=PipelineOptions(list(cfg.beam_pipeline_args)))
        with tft_beam.Context(temp_dir=str(out / "tmp"), force_tf_compat_v1=False):
            _build_pipeline(pipeline, merged_dir, out, embedding_columns, dim, cfg)
            started = time.monotonic()
            result = pipeline.run()
            result.wait_until_finish()
            beam_seconds = time.monotonic() - started
        raw_schema = schema_utils.schema_from_feature_spec(features.raw_feature_spec(embedding_columns, dim))
        metadata_io.write_metadata(dataset_metadata.DatasetMetadata(raw_schema), str(graph_dir(out) / "metadata"))
        counts = _counters(result)
        manifest = {
            "transform_dir": str(out_dir),
            "merged_dir": str(merged_dir),
            "transform_graph": str(graph_dir(out_dir)),
            "examples": {split: str(examples_dir(out_dir, split)) for split in paths.SPLITS},
            "embedding_columns": embedding_columns,
            "embedding_dim": dim,
            "rows_in": {split: counts.get(f"rows_in_transform_{split}", 0) for split in paths.SPLITS},
            "rows_out": {split: counts.get(f"rows_out_{split}", 0) for split in paths.SPLITS},
            "rows_expected": {split: merged["splits"][split]["rows"] for split in paths.SPLITS},
            "analysed_rows": counts.get("rows_in_analyse_train", 0),
            "beam_seconds": round(beam_seconds, 2),
        }
        check_counts(manifest)
        shutil.rmtree(out / "tmp", ignore_errors=True)
        write_json(out / MANIFEST, manifest)
    return manifest


def _counters(result) -> dict:
    from apache_beam.metrics.metric import MetricsFilter

    found = result.metrics().query(MetricsFilter().with_namespace("mmsearch"))["counters"]
    return {c.key.metric.name: c.committed if c.committed is not None else c.attempted for c in found}


def check_counts(manifest: dict) -> None:
    for split in paths.SPLITS:
        expected = manifest["rows_expected"][split]
        got_in, got_out = manifest["rows_in"][split], manifest["rows_out"][split]
        if got_in != expected or got_out != expected:
            lost = f"merged {expected}, read {got_in}, wrote {got_out}"
            raise RuntimeError(f"transform lost rows in split {split}: {lost}")


def complete_outputs(out_dir: Path) -> dict | None:
    """The manifest of a finished transform, or None if anything is missing."""
    out_dir = Path(out_dir)
    if not (out_dir / MANIFEST).exists():
        return None
    manifest = read_json(out_dir / MANIFEST)
    graph = graph_dir(out_dir)
    needed = [graph / "transform_fn" / "saved_model.pb", graph / "transformed_metadata", graph / "metadata"]
    if not all(p.exists() for p in needed):
        return None
    if not all(any(examples_dir(out_dir, split).glob("transformed_examples-*")) for split in paths.SPLITS):
        return None
    return manifest


def run(merged_dir: Path, *, out_dir: Path, cfg: config.RunConfig, tags: dict) -> dict:
    """The stage: `transform` in a child process, judged by its outputs; returns the output
    directory and its rows per split.

    A process that ran a Beam pipeline can crash at interpreter exit after writing
    everything: a complete, counted output is success whatever the exit code, and an
    incomplete one is failure whatever the exit code.
    """
    import json

    finished = complete_outputs(out_dir)
    if finished is not None:
        log.info("transform outputs in %s are already complete: reusing them", out_dir)
        return _result(finished)
    cmd = [sys.executable, "-m", "mmsearch.stages.transform", str(merged_dir), str(out_dir), json.dumps(cfg.as_dict())]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log.info("transform child exited %d\n%s", proc.returncode, proc.stderr[-4000:])
    manifest = complete_outputs(out_dir)
    if manifest is None:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"transform failed (exit code {proc.returncode}), outputs incomplete in {out_dir}:\n{tail}")
    if proc.returncode != 0:
        log.warning("transform exited %d after writing complete outputs; accepted by its outputs", proc.returncode)
    return _result(manifest)


def _result(manifest: dict) -> dict:
    return {"transform_dir": manifest["transform_dir"], "rows_out": manifest["rows_out"]}


if __name__ == "__main__":  # the child process `run` starts: the Beam pipeline itself
    import json

    from mmsearch.io import end_without_teardown

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    merged_dir, out_dir, settings = sys.argv[1:4]
    transform(Path(merged_dir), Path(out_dir), config.RunConfig.from_mapping(json.loads(settings)))
    end_without_teardown(0)  # a process that ran a Beam pipeline can crash in the interpreter's teardown
