"""`mmsearch`: every stage of the DAG from the command line.

Each stage prints its result (the same small JSON the DAG passes through XCom) on
stdout. Bad input exits 2 with one line on stderr naming the file, column and rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mmsearch import __version__
from mmsearch import config as C

EXIT_BAD_INPUT = 2


def _config(args: argparse.Namespace) -> C.RunConfig:
    values: dict = {}
    if args.config:
        text = Path(args.config).read_text() if Path(args.config).exists() else args.config
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

    return pull(args.repo, target=args.target, remote=args.remote)


def cmd_validate(args):
    from mmsearch import validate

    return validate.run(args.raw_dir, args.out, _config(args))


def cmd_merge(args):
    from mmsearch import merge

    return merge.merge(args.raw_dir, args.out, _config(args))


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
    p.set_defaults(func=cmd_pull)

    for name, func, help_text in (
        ("validate", cmd_validate, "check the raw files against the data contract"),
        ("merge", cmd_merge, "join judgements with embeddings, split by query group"),
    ):
        p = _with_config(sub.add_parser(name, help=help_text))
        p.add_argument("--raw-dir", type=Path, default=C.default_raw_dir())
        p.add_argument("--out", type=Path, required=True, help="output directory (written atomically)")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from mmsearch.io import DataError
    from mmsearch.pull import PullError

    try:
        result = args.func(args)
    except (DataError, PullError, ValueError) as error:
        print(f"mmsearch {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
