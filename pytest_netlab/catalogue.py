"""The README's generated parts: the check catalogue and the options table.

Both are rendered from the registry and the option table, so the README can
never disagree with the code: ``python -m pytest_netlab.catalogue README.md``
rewrites the text between the ``<!-- netlab:NAME -->`` and
``<!-- /netlab:NAME -->`` markers, and a self-test fails when the README is
out of date.

This module must not run checks.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from .options import OPTIONS
from .registry import Suite, all_suites

__all__ = ["render_catalogue", "render_options", "update_document", "SECTIONS"]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_catalogue(suites: dict[str, Suite] | None = None) -> str:
    """A Markdown table of every check, one section per suite."""
    suites = suites if suites is not None else all_suites()
    parts = []
    for suite in suites.values():
        placeholders = " ".join("{" + p + "}" for p in suite.placeholders)
        parts.append(f"#### {suite.name} ({suite.role.value}) `{placeholders}`\n")
        parts.append(f"{suite.title}. {suite.description}\n")
        parts.append("| check | severity | points | what a conforming target does | reference |")
        parts.append("|---|---|---|---|---|")
        for check in suite.checks.values():
            parts.append(
                f"| `{check.id}` | {check.severity.value} | {check.points:g} | {_cell(check.title)} | {_cell('; '.join(check.references))} |"
            )
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def render_options() -> str:
    """A Markdown table of every option and its ini twin."""
    rows = ["| option | ini key | meaning |", "|---|---|---|"]
    for option in OPTIONS:
        flag = option.flag if option.kind == "bool" else f"{option.flag}={option.metavar or option.name.upper()}"
        rows.append(f"| `{flag}` | `{option.ini}` | {_cell(option.help)} |")
    return "\n".join(rows) + "\n"


SECTIONS = {"catalogue": render_catalogue, "options": render_options}


def update_document(text: str) -> str:
    """Replace every generated section of ``text`` with its current rendering."""
    for name, render in SECTIONS.items():
        pattern = re.compile(rf"(<!-- netlab:{name} -->\n).*?(<!-- /netlab:{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"no <!-- netlab:{name} --> ... <!-- /netlab:{name} --> section")
        rendered = render()
        text = pattern.sub(lambda m: m.group(1) + rendered + m.group(2), text)
    return text


def main(argv: list[str]) -> int:
    """``python -m pytest_netlab.catalogue README.md``: rewrite the generated sections."""
    if len(argv) != 1:
        print("usage: python -m pytest_netlab.catalogue README.md", file=sys.stderr)
        return 2
    path = Path(argv[0])
    path.write_text(update_document(path.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
