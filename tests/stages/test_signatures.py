"""Every stage has the one signature mmsearch.stages documents: its inputs, then out_dir, cfg and
tags by keyword (the CLI and the DAG call them so)."""

import importlib
import inspect
import pkgutil

from mmsearch import stages


def test_every_stage_runs_with_its_inputs_then_out_dir_cfg_and_tags():
    for module in pkgutil.iter_modules(stages.__path__):
        parameters = inspect.signature(importlib.import_module(f"mmsearch.stages.{module.name}").run).parameters
        by_keyword = [name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        assert by_keyword[:3] == ["out_dir", "cfg", "tags"], (module.name, by_keyword)
        assert all(
            p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters.values() if p.name not in by_keyword
        )
