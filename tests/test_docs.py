"""The docs agree with the code where the code can say: every relative link in a Markdown file of
the repository reaches a file (and its `#anchor` a heading there), and the README's commands
table lists exactly the sub-commands `cmgl` and `cmgl bench` dispatch to."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from cmgl_dist.bench import SUBCOMMANDS as BENCH_SUBCOMMANDS
from cmgl_dist.cli import COMMANDS, usage

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SKIP_PARTS = {".venv", ".git", "outputs", "runs", "gpu_check_out", ".pytest_cache"}
README_LINES = 200  # a newcomer's page: the rest lives in docs/


def markdown_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.md") if not SKIP_PARTS & set(p.relative_to(ROOT).parts))


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    in_code, found = False, set()
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(github_anchor(line.lstrip("#")))
    return found


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def readme_commands() -> set[str]:
    """`cmgl X` and `cmgl bench Y` named in the first cell of the README's commands table."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Commands", 1)[1].split("\n\n", 2)[1]
    named = set()
    for row in table.splitlines()[2:]:
        words = row.split("`")[1].replace("\\|", "|").split()
        if words[1] == "bench":
            named |= {f"bench {sub}" for sub in words[2].split("|")}
        else:
            named.add(words[1])
    return named


def test_readme_commands_table_matches_the_cli():
    dispatched = {name for name in COMMANDS if name != "bench"} | {f"bench {sub}" for sub in BENCH_SUBCOMMANDS}
    assert readme_commands() == dispatched


def test_cli_listing_names_every_bench_subcommand():
    bench_line = next(line for line in usage().splitlines() if line.split()[:1] == ["bench"])
    for sub in BENCH_SUBCOMMANDS:
        assert sub in bench_line, f"`cmgl --help` does not mention `cmgl bench {sub}`: {bench_line!r}"


def test_readme_stays_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_LINES, f"README.md has {lines} lines; move detail into a topic doc under docs/"
