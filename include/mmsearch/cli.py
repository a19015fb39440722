"""`mmsearch`: every stage of the DAG from the command line.

Each stage prints its result (the same small JSON the DAG passes through XCom) on
stdout. Bad input exits 2 with one line on stderr naming the file, column and rows.
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


def _with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help="run configuration: a JSON file or a JSON string")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="one setting (value parsed as JSON)")
    return parser


def cmd_sample_data(args):
    from mmsearch import sample_data

    return sample_data.run_from_args(args)


def cmd_pull(args):
    from mmsearch.pull import pull

    return pull(args.repo, target=args.target, remote=args.remote, attempts=args.attempts)


def cmd_validate(args):
    from mmsearch import validate

    return validate.run(args.raw_dir, args.out, _config(args))


def cmd_merge(args):
    from mmsearch import merge

    return merge.merge(args.raw_dir, args.out, _config(args))


def cmd_transform(args):
    from mmsearch import transform

    return transform.transform(args.merged_dir, args.out, _config(args))


def cmd_train(args):
    from mmsearch import train

    lineage = json.loads(args.lineage) if args.lineage else None
    return train.train(args.transform_dir, args.out, _config(args), lineage)


def cmd_evaluate(args):
    from mmsearch import evaluate

    return evaluate.evaluate(args.merged_dir, read_json(args.train_summary), args.out, _config(args))


def cmd_register(args):
    from mmsearch import evaluate, register

    metrics = read_json(args.metrics)
    evaluation = {"metrics": {"model": {k: metrics["model"][k] for k in evaluate.HEADLINE}}}
    lineage = json.loads(args.lineage) if args.lineage else {}
    return register.register(lineage, read_json(args.train_summary), evaluation, args.merged_dir, _config(args))


def cmd_run_dag(args):
    from mmsearch import run_dag

    return run_dag.run_dag(args.conf)


def cmd_bench(args):
    from mmsearch import bench

    sizes = [int(s) for s in args.sizes.split(",") if s] + ([bench.FULL_SIZE] if args.full else [])
    return bench.main(sizes, e2e=not args.no_e2e, compare_compression=args.compression, repeat=args.repeat)


def cmd_stack(args):
    from mmsearch import stack

    return {"up": stack.up, "down": stack.down, "status": stack.status}[args.action]()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmsearch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mmsearch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    from mmsearch import sample_data  # light: numpy and pyarrow only

    p = sub.add_parser("sample-data", help="generate ESCI/SQID files with the real schemas")
    sample_data.add_arguments(p)
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("pull", help="dvc pull the raw data and verify every file arrived")
    p.add_argument("--repo", type=Path, default=C.REPO_ROOT, help="DVC repository (default: this project)")
    p.add_argument("--target", default="data/raw.dvc")
    p.add_argument("--remote", default="", help="DVC remote name (default: the repository's default)")
    p.add_argument("--attempts", type=int, default=C.RunConfig.dvc_pull_attempts, help="tries, with backoff")
    p.set_defaults(func=cmd_pull)

    for name, func, help_text in (
        ("validate", cmd_validate, "check the raw files against the data contract"),
        ("merge", cmd_merge, "join judgements with embeddings, split by query group"),
    ):
        p = _with_config(sub.add_parser(name, help=help_text))
        p.add_argument("--raw-dir", type=Path, default=C.default_raw_dir())
        p.add_argument("--out", type=Path, required=True, help="output directory (written atomically)")
        p.set_defaults(func=func)

    p = _with_config(sub.add_parser("transform", help="TensorFlow Transform on Beam over the merged data"))
    p.add_argument("--merged-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_transform)

    p = _with_config(sub.add_parser("train", help="train the Keras model, tracked in MLflow"))
    p.add_argument("--transform-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--lineage", help="JSON of Airflow lineage tags (dag_id, run_id)")
    p.set_defaults(func=cmd_train)

    p = _with_config(sub.add_parser("evaluate", help="score the trained model and the baselines on the test queries"))
    p.add_argument("--merged-dir", type=Path, required=True)
    p.add_argument("--train-summary", type=Path, required=True, help="train.json written by `mmsearch train`")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_evaluate)

    p = _with_config(sub.add_parser("register", help="register the model in MLflow; move aliases"))
    p.add_argument("--merged-dir", type=Path, required=True)
    p.add_argument("--train-summary", type=Path, required=True, help="train.json written by `mmsearch train`")
    p.add_argument("--metrics", type=Path, required=True, help="metrics.json written by `mmsearch evaluate`")
    p.add_argument("--lineage", help="JSON: dag_id, run_id and the pull stage's dvc hashes")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("run-dag", help="run mmsearch_training once with `airflow dags test`; print its summary")
    p.add_argument("--conf", default="{}", help="DAG run conf (JSON)")
    p.set_defaults(func=cmd_run_dag)

    p = sub.add_parser("bench", help="measure every stage at the real data's scale (make bench)")
    p.add_argument("--sizes", default="10000,50000,182000", help="query-product pairs, comma-separated")
    p.add_argument("--full", action="store_true", help="also 1,100,000 pairs (the ESCI small version)")
    p.add_argument("--no-e2e", action="store_true", help="skip the airflow dags test run")
    p.add_argument("--compression", action="store_true", help="also run the transform with GZIP output")
    p.add_argument("--repeat", type=int, default=1, help="runs of each stage and of the DAG; the median is reported")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("stack", help="the local server stack: Airflow 3 and an MLflow server (make up / make down)")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=cmd_stack)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from mmsearch.io import DataError, RegistryError
    from mmsearch.pull import PullError
    from mmsearch.stack import StackError

    try:
        # stdout carries only the result JSON; libraries' chatter (Keras, MLflow) goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            result = args.func(args)
    except (DataError, C.ConfigError) as error:
        print(f"mmsearch {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except FileNotFoundError as error:  # e.g. a stage pointed at a directory an earlier stage never wrote
        print(f"mmsearch {args.command}: error: {error.strerror}: {error.filename}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (PullError, RegistryError, StackError) as error:
        print(f"mmsearch {args.command}: error: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    if args.command == "transform":
        # A process that ran Beam can crash at interpreter exit after writing everything.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
