"""chexops is not on PyPI: every install hint (docs, error messages, scripts) installs this checkout
(`pip install -e '.[infra]'`), never the name `chexops` from an index, where anyone could publish it."""

from __future__ import annotations

import re
import subprocess

from support import ROOT

PIP_INSTALL = re.compile(r"\bpip3?\s+install\b(?P<args>[^\n`|;&#)]*)")
# The package by name: chexops, chexops[extra], chexops==1.0, 'chexops[infra]' (quotes stripped first).
BY_NAME = re.compile(r"^chexops(\[[^\]]*\])?([<>=!~].*)?$")


def by_name(line: str) -> list[str]:
    """The arguments of each `pip install` on the line that name chexops as a package from an index."""
    found = []
    for match in PIP_INSTALL.finditer(line):
        for token in match.group("args").split():
            if BY_NAME.match(token.strip("'\"")):
                found.append(token)
    return found


def test_the_check_catches_an_install_by_name():
    name = "chex" + "ops"  # not spelled out, so that this file passes its own scan
    assert by_name(f"pip install '{name}[infra]'") == [f"'{name}[infra]'"]
    assert by_name(f"python -m pip install -U {name}==1.2 torch") == [f"{name}==1.2"]
    assert by_name(f'(pip install "{name}")') == [f'"{name}"']
    assert by_name("pip install -e '.[infra]'") == []
    assert by_name(f"pip install {name}-tools") == []


def test_no_install_of_chexops_by_name_in_the_repository():
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    offenders = []
    for relative in filter(None, files):
        path = ROOT / relative
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if found := by_name(line):
                offenders.append(f"{relative}:{number}: {', '.join(found)}")
    assert len(files) > 100
    assert not offenders, "install chexops from the checkout (pip install -e '.[infra]'), not by name:\n" + "\n".join(
        offenders
    )
