"""The README's command blocks run as pasted: every bash, python and json block is marked with a name
(`tests/readme.py`) and run by the test of the suite that has what it needs (a trained
champion, a running stack); this checks that none is left out and none holds a placeholder."""

import re
from pathlib import Path

from tests import readme
from tests.helpers import REPO_ROOT

# What no test here can run, and why: the containers need a Docker engine (test_compose runs
# the block's `cp` and resolves the file it made with `docker-compose config`).
NOT_RUN_HERE = {
    "compose": ("docker-compose build", "docker-compose up", "docker-compose --profile", "docker-compose down")
}


def test_every_bash_python_and_json_block_is_marked():
    text = readme.README.read_text()
    fences = re.findall(r"^(.*)\n```(bash|python|json)$", text, re.M)
    unmarked = [previous for previous, _ in fences if not previous.startswith("<!-- readme-test:")]
    assert not unmarked, f"README blocks without a readme-test marker, after the lines: {unmarked}"
    assert len(readme.blocks()) == len(fences)


def test_every_marked_block_is_run_by_a_test():
    sources = "\n".join(path.read_text() for path in Path(REPO_ROOT / "tests").rglob("test_*.py"))
    used = set(re.findall(r"readme\.(?:block|command|commands)\(\s*\"([\w-]+)\"", sources))
    assert set(readme.blocks()) == used, f"blocks no test runs: {set(readme.blocks()) - used}"


def test_no_block_holds_a_placeholder():
    for name, (_, text) in readme.blocks().items():
        code = "\n".join(line.split("  #")[0] for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert "..." not in code and "<" not in code.replace("<<", ""), f"README block {name!r}: {text}"


def test_make_test_is_what_ci_runs():
    assert readme.command("two-commands", "make test") == "make test"
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text().splitlines()


def test_what_is_not_run_here_is_only_what_needs_docker():
    for name, starts in NOT_RUN_HERE.items():
        for command in readme.commands(name):
            assert command.startswith(("cp ", *starts)), f"README block {name!r}: {command} could be run"


def test_every_readme_section_the_code_names_exists():
    """`(README: <section>)` in what a command prints names a heading (its text before any colon)."""
    lines = readme.README.read_text().splitlines()
    headings = {line.lstrip("#").replace("`", "").split(":")[0].strip() for line in lines if line.startswith("#")}
    sources = "\n".join(path.read_text() for path in (REPO_ROOT / "include").rglob("*.py"))
    named = set(re.findall(r"\(README: ([^)]+)\)", sources))
    assert named and named <= headings, named - headings


def test_no_block_hard_codes_a_port_a_variable_sets():
    """A block a person pastes with MMSEARCH_SERVE_PORT=5011 set must reach port 5011."""
    for name, (_, text) in readme.blocks().items():
        code = "\n".join(line.split("  #")[0] for line in text.splitlines())
        assert not re.search(r"127\.0\.0\.1:(8080|5000|5001)\b", code), f"README block {name!r}: {text}"


def test_the_contents_list_every_section():
    assert "## Contents\n\n" + "\n".join(readme.contents()) + "\n" in readme.README.read_text()
