"""The README's command blocks, by name, for the tests that run them as pasted.

A block a person is meant to run carries a marker on the line before its fence,
`<!-- readme-test: NAME -->`; `tests/test_readme.py` checks that every bash and python block has
one and that a test runs it. A block reads the ports from the MMSEARCH_*_PORT variables, as a
person's shell has them, so a test's stack on free ports runs it unchanged."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.helpers import REPO_ROOT

README = REPO_ROOT / "README.md"
MARKED_BLOCK = re.compile(r"^<!-- readme-test: ([\w-]+) -->\n```(\w+)\n(.*?)^```", re.M | re.S)


def blocks() -> dict[str, tuple[str, str]]:
    """name: (language, text) of every marked block."""
    return {name: (language, text) for name, language, text in MARKED_BLOCK.findall(README.read_text())}


def block(name: str) -> str:
    return blocks()[name][1]


def commands(name: str) -> list[str]:
    """The block's commands: continuation lines joined, blank lines dropped."""
    joined = block(name).replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip()]


def command(name: str, starting: str) -> str:
    """The one command of block `name` whose line starts with `starting`, without its comment (so
    that a test can add make variables)."""
    found = [line for line in commands(name) if line.startswith(starting)]
    assert len(found) == 1, f"README block {name!r}: {len(found)} commands start with {starting!r}"
    return found[0].split("  #")[0].rstrip()


def shell_env(env: dict) -> dict:
    return {k: v for k, v in env.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}


def run(text: str, env: dict, cwd: Path = REPO_ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    """Pasted into bash, in `cwd` (the checkout by default: make's targets are there), from a
    shell that no make started (under `make test`, a sub-make would announce its directory)."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", text],
        env=shell_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped but hyphens, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def contents() -> list[str]:
    """The table of contents the README's `##` and `###` headings make, a line each."""
    lines, fenced = [], False
    for line in README.read_text().splitlines():
        fenced ^= line.startswith("```")
        found = not fenced and re.match(r"^(##+) (.+)$", line)
        if found and len(found[1]) <= 3 and found[2] != "Contents":
            indent = "  " * (len(found[1]) - 2)
            lines.append(f"{indent}- [{found[2].replace('`', '')}](#{anchor(found[2])})")
    return lines
