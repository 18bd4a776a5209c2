"""requirements.lock pins, exactly, every package setup.py asks for (extras `offline` and `test`
included), and nothing in it names this machine (index URLs, local paths): `make main`,
`make test` and CI install through it (Makefile)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)(\s*;.*)?$")


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    pins = {}
    for number, line in enumerate((ROOT / "requirements.lock").read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"requirements.lock:{number}: not an exact pin: {line!r}"
        pins[normalised(match[1])] = match[2]
    return pins


def setup_requirements() -> list[str]:
    """install_requires and every extra, read from setup.py's source."""
    call = next(node for node in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    given = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    return given["install_requires"] + [r for extra in given["extras_require"].values() for r in extra]


def test_every_requirement_of_setup_py_is_pinned():
    pins = lock_pins()
    names = {normalised(re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]) for requirement in setup_requirements()}
    assert names - set(pins) == set(), "run `make lock`"


def test_the_lock_names_no_index_or_local_path():
    text = (ROOT / "requirements.lock").read_text()
    assert not re.search(r"^\s*--(extra-)?index-url|^\s*--find-links|file://|/opt/|/tmp/", text, re.M)
