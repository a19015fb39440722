"""The DAG's stages, one module each, with one signature:

    run(<inputs>, *, out_dir: Path, cfg: RunConfig, tags: dict) -> dict

`<inputs>` are what the stage reads from the stages before it (a directory, or the small JSON
they returned); `out_dir` is where it writes, inside the DAG run's directory; `cfg` is the run's
configuration; `tags` name the Airflow DAG run (dag_id, run_id, logical_date: MLflow tags).
The return value is the small JSON passed on through XCom. No stage imports another: what two
share lives in the shared modules one floor down (mmsearch.training, mmsearch.gate, ...), and
`mmsearch <stage>` on the command line is built from these signatures (mmsearch.cli).
"""
