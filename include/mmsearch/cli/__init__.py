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
import sys

from mmsearch import __version__, config
from mmsearch.cli import stages, tools

EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3  # a remote (DVC, MLflow) did not answer or lacks data: may heal on retry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmsearch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mmsearch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in stages.STAGES:
        stages.add_stage(sub, name)
    tools.add_tools(sub)
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
    except (DataError, config.ConfigError, ChampionError) as error:
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
