"""`mmsearch`: every stage of the DAG from the command line, and the developer tools.

Each stage takes its inputs, an output directory and the run configuration (`--config`,
`--set key=value`), as its `run` function does, and prints its result (the small JSON the
DAG passes on through XCom) on stdout. Bad input exits 2 with one line on stderr naming the
file, column and rows; an unreachable remote (DVC, MLflow) exits 3.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from mmsearch import __version__
from mmsearch import config as C
from mmsearch.io import read_json

EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3  # a remote (DVC, MLflow) did not answer or lacks data: may heal on retry


def _config(args: argparse.Namespace) -> C.RunConfig:
    values: dict = {}
    if args.config:
        text = args.config if args.config.lstrip().startswith("{") else Path(args.config).read_text()
        values.update(json.loads(text))
    for item in args.set or []:
        key, _, raw = item.partition("=")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return C.RunConfig.from_mapping(values)


def _json(text: str | None) -> dict:
    """A JSON argument: inline, or the path of a JSON file."""
    if not text:
        return {}
    return json.loads(text) if text.lstrip().startswith(("{", "[")) else read_json(Path(text))


def cmd_pull(args):
    from mmsearch import pull

    cfg = _config(args)
    repo = args.repo or cfg.repo_dir
    return pull.run(repo, args.out or (cfg.raw_dir if cfg.raw_data_dir else repo / "data" / "raw"), cfg)


def cmd_validate(args):
    from mmsearch import validate

    return validate.run(args.raw_dir, args.out, _config(args))


def cmd_merge(args):
    from mmsearch import merge

    return merge.run(args.raw_dir, args.out, _config(args))


def cmd_transform(args):
    from mmsearch import transform

    if args.child:  # the Beam pipeline itself, in the process `transform.run` starts
        return transform.transform(args.merged_dir, args.out, _config(args))
    return transform.run(args.merged_dir, args.out, _config(args))


def cmd_candidates(args):
    from mmsearch import train

    return train.plan(_config(args), _json(args.tags))


def cmd_train(args):
    from mmsearch import train

    candidate = _json(args.candidate) or {"index": 0, "overrides": {}, "parent_run_id": None}
    return train.run(args.transform_dir, args.out, _config(args), candidate, _json(args.tags))


def cmd_baselines(args):
    from mmsearch import baselines

    return baselines.run(args.transform_dir, args.out, _config(args), args.parent_run_id, _json(args.tags))


def cmd_select(args):
    from mmsearch import select

    return select.run([read_json(path) for path in args.trained], args.out, _config(args))


def cmd_evaluate(args):
    from mmsearch import evaluate

    return evaluate.run(_json(args.model), _json(args.baselines), args.merged_dir, args.out, _config(args))


def cmd_register(args):
    from mmsearch import register

    return register.run(
        _json(args.model), _json(args.scores), _json(args.lineage), args.out, _config(args), _json(args.tags)
    )


def cmd_drift(args):
    from mmsearch import drift

    if args.reference_dir:
        against = f"the data in {args.reference_dir}"
        return drift.report_drift(
            args.merged_dir, args.reference_dir, against, args.out, _config(args), _json(args.tags)
        )
    return drift.run(args.merged_dir, args.out, _config(args), _json(args.tags))


def cmd_rank(args):
    from mmsearch import rank

    return rank.run(args.out, _config(args), _json(args.tags), args.version, args.merged_dir)


def cmd_real_data(args):
    from mmsearch import sources

    return sources.import_all(args.repo, "data/raw", args.manifest, args.base_url)


def cmd_sample_data(args):
    from mmsearch.tools import sample_data

    return sample_data.run_from_args(args)


def cmd_ceiling(args):
    from mmsearch.tools import sample_data

    return sample_data.ceiling(args.raw_dir, args.merged_dir, args.split)


def cmd_run_dag(args):
    from mmsearch.tools import run_dag

    return run_dag.run_dag(args.conf, as_json=args.json, logical_date=args.logical_date)


def cmd_bench(args):
    from mmsearch.tools import bench

    sizes = [int(s) for s in args.sizes.split(",") if s] + ([bench.FULL_SIZE] if args.full else [])
    return bench.main(sizes, e2e=not args.no_e2e, compare_compression=args.compression, repeat=args.repeat)


def cmd_bench_stack(args):
    from mmsearch.tools import bench_stack

    return bench_stack.main(repeat=args.repeat)


def cmd_mlflow_ui(args):
    from mmsearch.tools import mlflow_ui

    return mlflow_ui.main(args.port)


def cmd_serve_example(args):
    from mmsearch.tools import serve_example

    return serve_example.main(args.raw_dir, args.pairs)


def cmd_stack(args):
    from mmsearch.stack import lifecycle as stack
    from mmsearch.stack.settings import StackSettings

    if args.action == "up":
        return stack.up(StackSettings.from_env(executor=args.executor, workers=args.workers))
    if args.action == "restart":
        return stack.restart(args.component)
    if args.action == "status":
        found = stack.status()
        return found if args.json else stack.status_table(found)
    actions = {"down": stack.down, "serve": stack.serve}
    return actions[args.action]()


def _stage(sub, name: str, func, help_text: str, inputs: list[tuple]) -> argparse.ArgumentParser:
    """A stage's command: its inputs, --out, then the run configuration."""
    parser = sub.add_parser(name, help=help_text)
    for flag, kwargs in inputs:
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--out", type=Path, required=name not in ("pull",), help="output directory")
    parser.add_argument("--config", help="run configuration: a JSON file or a JSON string")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="one setting (value parsed as JSON)")
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmsearch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mmsearch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    path = {"type": Path, "required": True}
    tags = ("--tags", {"help": "JSON: the Airflow DAG run's dag_id, run_id, logical_date (MLflow tags)"})

    _stage(
        sub,
        "pull",
        cmd_pull,
        "dvc pull the raw data and verify every file arrived (--out: the raw directory)",
        [("--repo", {"type": Path, "help": "DVC repository (default: dvc_repo, else this project)"})],
    )
    _stage(
        sub,
        "validate",
        cmd_validate,
        "check the raw files against the data contract",
        [("--raw-dir", {"type": Path, "default": C.default_raw_dir()})],
    )
    _stage(
        sub,
        "merge",
        cmd_merge,
        "join judgements with embeddings, split by query group",
        [("--raw-dir", {"type": Path, "default": C.default_raw_dir()})],
    )
    _stage(
        sub,
        "drift",
        cmd_drift,
        "drift of merged data against the champion's (or --reference-dir); report to MLflow",
        [("--merged-dir", path), ("--reference-dir", {"type": Path, "help": "default: the champion's data"}), tags],
    )
    _stage(
        sub,
        "rank",
        cmd_rank,
        "rank every working-set pair with the champion (or --version); ranked.parquet and its nDCG",
        [
            ("--version", {"help": "a registered version instead of the champion"}),
            ("--merged-dir", {"type": Path, "help": "default: the merged data the version was trained on"}),
            tags,
        ],
    )
    _stage(
        sub,
        "transform",
        cmd_transform,
        "TensorFlow Transform on Beam over the merged data",
        [("--merged-dir", path), ("--child", {"action": "store_true", "help": argparse.SUPPRESS})],
    )
    _stage(sub, "candidates", cmd_candidates, "open the parent MLflow run; list the candidates to train", [tags])
    _stage(
        sub,
        "train",
        cmd_train,
        "train one candidate in a nested MLflow run",
        [("--transform-dir", path), ("--candidate", {"help": "JSON from `mmsearch candidates` (default: #0)"}), tags],
    )
    _stage(
        sub,
        "baselines",
        cmd_baselines,
        "fit the CLIP baseline, train the original design's query model",
        [("--transform-dir", path), ("--parent-run-id", {"help": "MLflow run to nest the query model under"}), tags],
    )
    _stage(
        sub,
        "select",
        cmd_select,
        "keep the best trained candidate by validation macro-F1",
        [("--trained", {"nargs": "+", "type": Path, "required": True, "help": "train.json of each candidate"})],
    )
    _stage(
        sub,
        "evaluate",
        cmd_evaluate,
        "score the model, the baselines and the champion on the test queries",
        [
            ("--model", {"required": True, "help": "selection.json (or a train.json)"}),
            ("--baselines", {"required": True, "help": "baselines.json"}),
            ("--merged-dir", path),
        ],
    )
    _stage(
        sub,
        "register",
        cmd_register,
        "register the model in MLflow; the gate moves the aliases",
        [
            ("--model", {"required": True, "help": "selection.json"}),
            ("--scores", {"required": True, "help": "scores.json written by evaluate"}),
            ("--lineage", {"help": "JSON printed by `mmsearch pull` (the data's md5s)"}),
            tags,
        ],
    )

    p = sub.add_parser("real-data", help="dvc import-url the public ESCI and SQID files into data/raw (pinned)")
    p.add_argument("--base-url", default="", help="a mirror serving <base-url>/<repository>/<revision>/<file>")
    p.add_argument("--manifest", type=Path, default=C.REPO_ROOT / "data" / "sources.yaml", help="the pinned files")
    p.add_argument("--repo", type=Path, default=C.REPO_ROOT, help="the DVC repository (default: this project)")
    p.set_defaults(func=cmd_real_data)

    from mmsearch.tools import sample_data  # light: numpy and pyarrow only

    p = sub.add_parser("sample-data", help="generate ESCI/SQID files with the real schemas")
    sample_data.add_arguments(p)
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("ceiling", help="the best possible scores on a split of generated data (its true p(label))")
    p.add_argument("--raw-dir", type=Path, required=True)
    p.add_argument("--merged-dir", type=Path, required=True)
    p.add_argument("--split", default="test", choices=C.SPLITS)
    p.set_defaults(func=cmd_ceiling)

    p = sub.add_parser("run-dag", help="run mmsearch_training once with `airflow dags test`; print its summary")
    p.add_argument("--conf", default="{}", help="DAG run conf (JSON)")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON")
    p.add_argument("--logical-date", help="the run's logical date (default: now)")
    p.set_defaults(func=cmd_run_dag)

    p = sub.add_parser("bench", help="measure every stage at the real data's scale (make bench)")
    p.add_argument("--sizes", default="10000,50000,182000", help="query-product pairs, comma-separated")
    p.add_argument("--full", action="store_true", help="also 1,100,000 pairs (the ESCI small version)")
    p.add_argument("--no-e2e", action="store_true", help="skip the airflow dags test run")
    p.add_argument("--compression", action="store_true", help="also run the transform with GZIP output")
    p.add_argument("--repeat", type=int, default=1, help="runs of each stage and of the DAG; the median is reported")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("bench-stack", help="the server stack's figures: start-up, memory, Celery run, serving")
    p.add_argument("--repeat", type=int, default=3, help="repeats of each timing; the median is reported")
    p.set_defaults(func=cmd_bench_stack)

    p = sub.add_parser("mlflow-ui", help="MLflow's UI on make run's store, on a free port (make mlflow-ui)")
    p.add_argument("--port", type=int, help="default: a free port")
    p.set_defaults(func=cmd_mlflow_ui)

    p = sub.add_parser("serve-example", help="send judged pairs of the raw data to the served champion")
    p.add_argument("--raw-dir", type=Path, default=Path("data/raw"), help="the raw ESCI/SQID files (default: data/raw)")
    p.add_argument("--pairs", type=int, default=3, help="query-product pairs in the request (default: 3)")
    p.set_defaults(func=cmd_serve_example)

    p = sub.add_parser("stack", help="the local server stack: PostgreSQL, Airflow 3, MLflow (make up / down / serve)")
    p.add_argument("action", choices=["up", "down", "status", "serve", "restart"])
    p.add_argument("component", nargs="?", help="restart: the component to restart (postgres, redis, worker-1, ...)")
    p.add_argument("--executor", choices=["local", "celery"], help="up: Airflow's executor (default: local)")
    p.add_argument("--workers", type=int, help="up: Celery workers (default: 2)")
    p.add_argument("--json", action="store_true", help="status: the JSON a script reads, not the table")
    p.set_defaults(func=cmd_stack)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from mmsearch.io import DataError, RegistryError
    from mmsearch.pull import PullError
    from mmsearch.stack.services import ServiceError
    from mmsearch.stack.settings import StackError
    from mmsearch.tools.run_dag import RunFailed

    try:
        # stdout carries only the result; libraries' chatter (Keras, MLflow) goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            result = args.func(args)
    except (DataError, C.ConfigError) as error:
        print(f"mmsearch {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunFailed as error:
        print(f"mmsearch {args.command}: {error}", file=sys.stderr)
        return 1
    except FileNotFoundError as error:  # e.g. a stage pointed at a directory an earlier stage never wrote
        print(f"mmsearch {args.command}: error: {error.strerror}: {error.filename}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (PullError, RegistryError, StackError, ServiceError) as error:
        print(f"mmsearch {args.command}: error: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(result if isinstance(result, str) else json.dumps(result, indent=2, sort_keys=True, default=str))
    if args.command == "transform" and args.child:
        # A process that ran Beam can crash at interpreter exit after writing everything.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
