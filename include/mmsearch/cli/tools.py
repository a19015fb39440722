"""`mmsearch <tool>`: the developer tools beside the stages (sample data, the benches, the
stack, the champion's history and rollback, ...), each imported when its command runs."""

from __future__ import annotations

import argparse
import getpass
import importlib
import os
import sys
from pathlib import Path

from mmsearch import config, paths


def _tool(name: str):
    return importlib.import_module(f"mmsearch.tools.{name}")


def _stack(args: argparse.Namespace):
    from mmsearch.stack import lifecycle as stack
    from mmsearch.stack.settings import StackError, StackSettings

    if args.action == "up":
        found = stack.up(StackSettings.from_env(executor=args.executor, workers=args.workers))
        return found if args.json else stack.status_table(found, started=True)
    if args.action == "restart":
        return stack.restart(args.component)
    if args.action == "status":
        try:
            found = stack.status()
        except StackError as error:
            if args.json:
                raise
            return f"stopped: {error}"  # an answer, not a failure: scripts read --json's exit status
        return found if args.json else stack.status_table(found)
    if args.action == "down":
        stopped = stack.down()
        return stopped if args.json else stack.down_text(stopped)
    return stack.serve()


def _champion(args: argparse.Namespace):
    """`mmsearch champion history|rollback` on the running stack's registry, else make run's."""
    try:
        import mlflow
    except ImportError:  # the Airflow environment's `mmsearch`: the same command in the ML environment
        os.execv(paths.ml_python(), [paths.ml_python(), "-m", "mmsearch.cli", *sys.argv[1:]])

    from mmsearch import champion as champions
    from mmsearch.stack.clients import registry_env

    os.environ.update(registry_env())
    uri = paths.mlflow_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    if args.action == "history":
        moves = champions.history(client, args.model)
        return [vars(move) for move in moves] if args.json else champions.history_table(moves)
    if not args.reason.strip():
        raise champions.ChampionError("say why: --reason TEXT (make rollback REASON='...'); it is recorded")
    moved = champions.rollback(client, args.model, args.by, args.reason, args.to)
    return (
        f"champion of {args.model} in {paths.redact_uri(uri)}: v{moved.previous} -> v{moved.version} "
        f"(rollback by {moved.by} at {moved.at}: {moved.reason}); the re-ranking service follows within its poll"
    )


def _bench(args: argparse.Namespace) -> dict:
    bench = _tool("bench")
    sizes = [int(s) for s in args.sizes.split(",") if s] + ([1_100_000] if args.full else [])
    return bench.main(sizes, e2e=not args.no_e2e, repeat=args.repeat)


def add_tools(sub) -> None:
    p = sub.add_parser("real-data", help="dvc import-url the public ESCI and SQID files into data/raw (pinned)")
    p.add_argument("--base-url", default="", help="a mirror serving <base-url>/<repository>/<revision>/<file>")
    p.add_argument("--manifest", type=Path, default=paths.REPO_ROOT / "data" / "sources.yaml", help="the pinned files")
    p.add_argument("--repo", type=Path, default=paths.REPO_ROOT, help="the DVC repository (default: this project)")
    p.set_defaults(
        func=lambda a: importlib.import_module("mmsearch.sources").import_all(
            a.repo, "data/raw", a.manifest, a.base_url
        )
    )

    sample_data = _tool("sample_data")  # light: numpy and pyarrow only
    p = sub.add_parser("sample-data", help="generate ESCI/SQID files with the real schemas")
    sample_data.add_arguments(p)
    p.set_defaults(func=sample_data.run_from_args)

    p = sub.add_parser("ceiling", help="the best possible scores on a split of generated data (its true p(label))")
    p.add_argument("--raw-dir", type=Path, required=True)
    p.add_argument("--merged-dir", type=Path, required=True)
    p.add_argument("--split", default="test", choices=paths.SPLITS)
    p.set_defaults(func=lambda a: _tool("ceiling").ceiling(a.raw_dir, a.merged_dir, a.split))

    p = sub.add_parser("run-dag", help="run mmsearch_training once with `airflow dags test`; print its summary")
    p.add_argument("--conf", default="{}", help="DAG run conf (JSON)")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON")
    p.add_argument("--logical-date", help="the run's logical date (default: now)")
    p.set_defaults(func=lambda a: _tool("run_dag").run_dag(a.conf, as_json=a.json, logical_date=a.logical_date))

    p = sub.add_parser("bench", help="measure every stage at the real data's scale (make bench)")
    p.add_argument("--sizes", default="10000,50000,182000", help="query-product pairs, comma-separated")
    p.add_argument("--full", action="store_true", help="also 1,100,000 pairs (the ESCI small version)")
    p.add_argument("--no-e2e", action="store_true", help="skip the airflow dags test run")
    p.add_argument("--repeat", type=int, default=1, help="runs of each stage and of the DAG; the median is reported")
    p.set_defaults(func=_bench)

    p = sub.add_parser("bench-stack", help="the server stack's figures: start-up, memory, Celery run, serving")
    p.add_argument("--repeat", type=int, default=3, help="repeats of each timing; the median is reported")
    p.set_defaults(func=lambda a: _tool("bench_stack").main(repeat=a.repeat))

    p = sub.add_parser("mlflow-ui", help="MLflow's UI on make run's store, on a free port (make mlflow-ui)")
    p.add_argument("--port", type=int, help="default: a free port")
    p.set_defaults(func=lambda a: _tool("mlflow_ui").main(a.port))

    p = sub.add_parser("serve-example", help="re-rank one query's judged products of the raw data with the service")
    p.add_argument("--raw-dir", type=Path, default=Path("data/raw"), help="the raw ESCI/SQID files (default: data/raw)")
    p.add_argument("--pairs", type=int, default=8, help="judged products of the query to rank (default: 8)")
    p.set_defaults(func=lambda a: _tool("serve_example").main(a.raw_dir, a.pairs))

    p = sub.add_parser("champion", help="the champion alias: its history, or a rollback (ML environment)")
    p.add_argument("action", choices=["history", "rollback"])
    model = config.RunConfig().registered_model_name
    p.add_argument("--model", default=model, help=f"the registered model (default: {model})")
    p.add_argument("--to", help="rollback: the version to restore (default: the champion before this one)")
    p.add_argument("--reason", default="", help="rollback: why (required; recorded with the move)")
    p.add_argument("--by", default=os.environ.get("USER") or getpass.getuser(), help="rollback: who (default: you)")
    p.add_argument("--json", action="store_true", help="history: JSON, not the table")
    p.set_defaults(func=_champion)

    p = sub.add_parser("stack", help="the local server stack: PostgreSQL, Airflow 3, MLflow (make up / down / serve)")
    p.add_argument("action", choices=["up", "down", "status", "serve", "restart"])
    p.add_argument("component", nargs="?", help="restart: the component to restart (postgres, redis, worker-1, ...)")
    p.add_argument("--executor", choices=["local", "celery"], help="up: Airflow's executor (default: local)")
    p.add_argument("--workers", type=int, help="up: Celery workers (default: 2)")
    p.add_argument("--json", action="store_true", help="up, down, status: the JSON a script reads, not the text")
    p.set_defaults(func=_stack)
