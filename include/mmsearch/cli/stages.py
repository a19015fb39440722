"""`mmsearch <stage>`: a command for each stage of the DAG, built from the stage's own `run`
signature (mmsearch.stages): its inputs become options (a `Path` a path, a `dict` JSON inline or a
JSON file's path; required unless the parameter has a default), then `--out`, the run
configuration (`--config`, `--set key=value`) and `--tags`. The command prints the stage's result,
the small JSON the DAG passes on through XCom."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
from pathlib import Path

from mmsearch import config
from mmsearch.io import read_json


def _config(args: argparse.Namespace) -> config.RunConfig:
    values = _json(args.config)
    for item in args.set or []:
        key, _, raw = item.partition("=")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return config.RunConfig.from_mapping(values)


def _json(text: str | None) -> dict:
    """A JSON argument: inline, or the path of a JSON file."""
    if not text:
        return {}
    return json.loads(text) if text.lstrip().startswith(("{", "[")) else read_json(Path(text))


# The modules of mmsearch.stages, in the DAG's order: a command each (`check_changes` is `check-changes`)
STAGES = (
    "pull",
    "publish",
    "check_changes",
    "validate",
    "merge",
    "drift",
    "transform",
    "candidates",
    "train",
    "baselines",
    "select",
    "evaluate",
    "register",
    "promote",
    "rank",
    "clean_old_runs",
)
# What each stage input is, by its name in the stages' signatures (the same name means the same
# thing in every stage); its type and whether it is required come from the signature itself.
INPUTS = {
    "raw_dir": "the raw ESCI/SQID directory (pull's --out)",
    "lineage": "pull's result (the data's md5s): JSON, or a JSON file",
    "data_digest": "the raw data's identity for the splits' MLflow datasets (DVC's md5; default: none)",
    "merged_dir": "merge's --out",
    "reference_dir": "merged data to compare against (default: the champion's)",
    "transform_dir": "transform's --out",
    "candidate": "one of those `mmsearch candidates` lists: JSON, or a JSON file (default: the settings as they are)",
    "parent_run_id": "the MLflow run to nest under (the candidates' parent_run_id)",
    "trained": "train.json of each candidate",
    "model": "select's selection.json (or one candidate's train.json)",
    "baselines": "baselines.json written by baselines",
    "scores": "scores.json written by evaluate",
    "registry": "register's result (summary.json's registry): JSON, or a JSON file",
    "answer": "the approval task's result: JSON, or a JSON file",
    "version": "a registered version instead of the champion",
}


def _is_json(parameter: inspect.Parameter) -> bool:
    """An input given as JSON (inline, or a file's path): a `dict` or a `list[dict]`. Annotations
    are read as written (`from __future__ import annotations`): `dict | None`, `Path`, ..."""
    return str(parameter.annotation).startswith(("dict", "list["))


def _input_argument(parameter: inspect.Parameter) -> dict:
    """An input's argparse keywords, from its signature: its type, and required unless it has a default."""
    argument = {"help": INPUTS[parameter.name], "required": parameter.default is inspect.Parameter.empty}
    if str(parameter.annotation).startswith("list["):
        return {**argument, "nargs": "+"}
    return {**argument, "type": Path if "Path" in str(parameter.annotation) else str}


def add_stage(sub, name: str) -> None:
    """`mmsearch <stage>`: the stage's inputs as options, then --out, the configuration and --tags."""
    module = importlib.import_module(f"mmsearch.stages.{name}")
    run = module.run
    about = inspect.getdoc(module).split("\n\n")[0]
    description = f"{about}\n\n{inspect.getdoc(run)}"
    parser = sub.add_parser(
        name.replace("_", "-"),
        help=about.replace("\n", " ").split(". ")[0].rstrip("."),
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parameters = inspect.signature(run).parameters
    inputs = [p for p in parameters.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    for parameter in inputs:
        parser.add_argument(f"--{parameter.name.replace('_', '-')}", **_input_argument(parameter))
    out_required = parameters["out_dir"].default is inspect.Parameter.empty
    parser.add_argument("--out", type=Path, required=out_required, help="output directory")
    parser.add_argument("--config", help="run configuration: a JSON file or a JSON string")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="one setting (value parsed as JSON)")
    parser.add_argument("--tags", help="JSON: the Airflow run's dag_id, run_id, logical_date (MLflow tags)")

    def call(args: argparse.Namespace):  # JSON read here, where a missing file is bad input (exit 2)
        given = {p.name: getattr(args, p.name) for p in inputs}
        for parameter in filter(_is_json, inputs):
            value = given[parameter.name]
            given[parameter.name] = [_json(item) for item in value] if isinstance(value, list) else _json(value)
        return run(**given, out_dir=args.out, cfg=_config(args), tags=_json(args.tags))

    parser.set_defaults(func=call)
