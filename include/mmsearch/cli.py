"""`mmsearch`: every stage of the DAG from the command line, and the developer tools.

Each stage takes its inputs, an output directory and the run configuration (`--config`,
`--set key=value`), as its `run` function does, and prints its result (the small JSON the
DAG passes on through XCom) on stdout. Bad input exits 2 with one line on stderr naming the
file, column and rows; an unreachable remote (DVC, MLflow) exits 3.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import importlib
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
    values = _json(args.config)
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


def _stage(name: str):
    """A stage's module, imported when its command runs (TensorFlow only for the ML stages)."""
    return importlib.import_module(f"mmsearch.{name}")


def _tool(name: str):
    return importlib.import_module(f"mmsearch.tools.{name}")


def _pull(args: argparse.Namespace, cfg: C.RunConfig) -> dict:
    repo = args.repo or cfg.repo_dir
    return _stage("pull").run(repo, args.out or (cfg.raw_dir if cfg.raw_data_dir else repo / "data" / "raw"), cfg)


def _transform(args: argparse.Namespace, cfg: C.RunConfig) -> dict:
    if args.child:  # the Beam pipeline itself, in the process `transform.run` starts
        return _stage("transform").transform(args.merged_dir, args.out, cfg)
    return _stage("transform").run(args.merged_dir, args.out, cfg)


def _drift(args: argparse.Namespace, cfg: C.RunConfig) -> dict:
    drift, tags, against = _stage("drift"), _json(args.tags), f"the data in {args.reference_dir}"
    if args.reference_dir:
        return drift.report_drift(args.merged_dir, args.reference_dir, against, args.out, cfg, tags)
    return drift.run(args.merged_dir, args.out, cfg, tags)


def _stack(args: argparse.Namespace):
    from mmsearch.stack import lifecycle as stack
    from mmsearch.stack.settings import StackSettings

    if args.action == "up":
        return stack.up(StackSettings.from_env(executor=args.executor, workers=args.workers))
    if args.action == "restart":
        return stack.restart(args.component)
    if args.action == "status":
        found = stack.status()
        return found if args.json else stack.status_table(found)
    return {"down": stack.down, "serve": stack.serve}[args.action]()


def _champion(args: argparse.Namespace):
    """`mmsearch champion history|rollback` on the running stack's registry, else make run's."""
    try:
        import mlflow
    except ImportError:  # the Airflow environment's `mmsearch`: the same command in the ML environment
        os.execv(C.ml_python(), [C.ml_python(), "-m", "mmsearch.cli", *sys.argv[1:]])

    from mmsearch import champion as champions
    from mmsearch.stack.clients import registry_env

    os.environ.update(registry_env())
    uri = C.mlflow_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    if args.action == "history":
        moves = champions.history(client, args.model)
        return [vars(move) for move in moves] if args.json else champions.history_table(moves)
    if not args.reason.strip():
        raise champions.ChampionError("say why: --reason TEXT (make rollback REASON='...'); it is recorded")
    moved = champions.rollback(client, args.model, args.by, args.reason, args.to)
    return (
        f"champion of {args.model} in {C.redact_uri(uri)}: v{moved.previous} -> v{moved.version} "
        f"(rollback by {moved.by} at {moved.at}: {moved.reason}); the re-ranking service follows within its poll"
    )


def _bench(args: argparse.Namespace) -> dict:
    bench = _tool("bench")
    sizes = [int(s) for s in args.sizes.split(",") if s] + ([1_100_000] if args.full else [])
    return bench.main(sizes, e2e=not args.no_e2e, repeat=args.repeat)


PATH = {"type": Path, "required": True}
RAW_DIR = ("--raw-dir", {"type": Path, "default": C.REPO_ROOT / "data" / "raw"})
MERGED_DIR = ("--merged-dir", PATH)
TRANSFORM_DIR = ("--transform-dir", PATH)
FIRST = {"index": 0, "overrides": {}, "parent_run_id": None}  # `mmsearch train` without --candidate
TAGS = ("--tags", {"help": "JSON: the Airflow DAG run's dag_id, run_id, logical_date (MLflow tags)"})

# name: (help, inputs besides --out and the configuration, what it runs on (args, configuration))
STAGES = {
    "pull": (
        "dvc pull the raw data and verify every file arrived (--out: the raw directory)",
        [("--repo", {"type": Path, "help": "DVC repository (default: dvc_repo, else this project)"})],
        _pull,
    ),
    "validate": (
        "check the raw files against the data contract",
        [RAW_DIR],
        lambda a, cfg: _stage("validate").run(a.raw_dir, a.out, cfg),
    ),
    "publish": (
        "check the raw product file and publish it as the re-ranking service's catalogue",
        [RAW_DIR, TAGS],
        lambda a, cfg: _stage("publish").run({"raw_dir": str(a.raw_dir)}, a.out, cfg, _json(a.tags)),
    ),
    "merge": (
        "join judgements with embeddings, split by query group",
        [RAW_DIR],
        lambda a, cfg: _stage("merge").run(a.raw_dir, a.out, cfg),
    ),
    "drift": (
        "drift of merged data against the champion's (or --reference-dir); report to MLflow",
        [MERGED_DIR, ("--reference-dir", {"type": Path, "help": "default: the champion's data"}), TAGS],
        _drift,
    ),
    "rank": (
        "rank every working-set pair with the champion (or --version); ranked.parquet and its nDCG",
        [
            ("--version", {"help": "a registered version instead of the champion"}),
            ("--merged-dir", {"type": Path, "help": "default: the merged data the version was trained on"}),
            TAGS,
        ],
        lambda a, cfg: _stage("rank").run(a.out, cfg, _json(a.tags), a.version, a.merged_dir),
    ),
    "transform": (
        "TensorFlow Transform on Beam over the merged data",
        [MERGED_DIR, ("--child", {"action": "store_true", "help": argparse.SUPPRESS})],
        _transform,
    ),
    "candidates": (
        "open the parent MLflow run; list the candidates to train",
        [TAGS],
        lambda a, cfg: _stage("train").plan(cfg, _json(a.tags)),
    ),
    "train": (
        "train one candidate in a nested MLflow run",
        [TRANSFORM_DIR, ("--candidate", {"help": "JSON from `mmsearch candidates` (default: #0)"}), TAGS],
        lambda a, cfg: _stage("train").run(a.transform_dir, a.out, cfg, _json(a.candidate) or FIRST, _json(a.tags)),
    ),
    "baselines": (
        "fit the CLIP baseline, train the original design's query model",
        [TRANSFORM_DIR, ("--parent-run-id", {"help": "MLflow run to nest the query model under"}), TAGS],
        lambda a, cfg: _stage("baselines").run(a.transform_dir, a.out, cfg, a.parent_run_id, _json(a.tags)),
    ),
    "select": (
        "keep the best trained candidate by validation macro-F1",
        [("--trained", {"nargs": "+", "type": Path, "required": True, "help": "train.json of each candidate"})],
        lambda a, cfg: _stage("select").run([read_json(path) for path in a.trained], a.out, cfg),
    ),
    "evaluate": (
        "score the model, the baselines and the champion on the test queries",
        [
            ("--model", {"required": True, "help": "selection.json (or a train.json)"}),
            ("--baselines", {"required": True, "help": "baselines.json"}),
            MERGED_DIR,
        ],
        lambda a, cfg: _stage("evaluate").run(_json(a.model), _json(a.baselines), a.merged_dir, a.out, cfg),
    ),
    "register": (
        "register the model in MLflow; the gate moves the aliases",
        [
            ("--model", {"required": True, "help": "selection.json"}),
            ("--scores", {"required": True, "help": "scores.json written by evaluate"}),
            ("--lineage", {"help": "JSON printed by `mmsearch pull` (the data's md5s)"}),
            TAGS,
        ],
        lambda a, cfg: _stage("register").run(
            _json(a.model), _json(a.scores), _json(a.lineage), a.out, cfg, _json(a.tags)
        ),
    ),
}


def _add_stage(sub, name: str, help_text: str, inputs: list[tuple], call) -> None:
    """A stage's command: its inputs, --out, then the run configuration."""
    parser = sub.add_parser(name, help=help_text)
    for flag, kwargs in inputs:
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--out", type=Path, required=name != "pull", help="output directory")
    parser.add_argument("--config", help="run configuration: a JSON file or a JSON string")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="one setting (value parsed as JSON)")
    parser.set_defaults(func=lambda args: call(args, _config(args)))


def _add_tools(sub) -> None:
    p = sub.add_parser("real-data", help="dvc import-url the public ESCI and SQID files into data/raw (pinned)")
    p.add_argument("--base-url", default="", help="a mirror serving <base-url>/<repository>/<revision>/<file>")
    p.add_argument("--manifest", type=Path, default=C.REPO_ROOT / "data" / "sources.yaml", help="the pinned files")
    p.add_argument("--repo", type=Path, default=C.REPO_ROOT, help="the DVC repository (default: this project)")
    p.set_defaults(func=lambda a: _stage("sources").import_all(a.repo, "data/raw", a.manifest, a.base_url))

    sample_data = _tool("sample_data")  # light: numpy and pyarrow only
    p = sub.add_parser("sample-data", help="generate ESCI/SQID files with the real schemas")
    sample_data.add_arguments(p)
    p.set_defaults(func=sample_data.run_from_args)

    p = sub.add_parser("ceiling", help="the best possible scores on a split of generated data (its true p(label))")
    p.add_argument("--raw-dir", type=Path, required=True)
    p.add_argument("--merged-dir", type=Path, required=True)
    p.add_argument("--split", default="test", choices=C.SPLITS)
    p.set_defaults(func=lambda a: sample_data.ceiling(a.raw_dir, a.merged_dir, a.split))

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
    model = C.RunConfig().registered_model_name
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
    p.add_argument("--json", action="store_true", help="status: the JSON a script reads, not the table")
    p.set_defaults(func=_stack)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmsearch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mmsearch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, inputs, call) in STAGES.items():
        _add_stage(sub, name, help_text, inputs, call)
    _add_tools(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `mmsearch` command's exit status. Where TensorFlow was loaded, it ends the process itself,
    without the interpreter's teardown (a second or more, and a crash after a Beam pipeline)."""
    from mmsearch.io import end_without_teardown

    status = _run(argv)
    if "tensorflow" in sys.modules:
        end_without_teardown(status)
    return status


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from mmsearch.champion import ChampionError
    from mmsearch.dvc_repo import PullError
    from mmsearch.io import DataError, RegistryError
    from mmsearch.stack.services import ServiceError
    from mmsearch.stack.settings import StackError
    from mmsearch.tools.run_dag import RunFailed

    try:
        # stdout carries only the result; libraries' chatter (Keras, MLflow) goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            result = args.func(args)
    except (DataError, C.ConfigError, ChampionError) as error:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
