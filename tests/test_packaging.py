"""Packaging: every suite ships in the distribution, and the README is current."""

from __future__ import annotations

import configparser

from pytest_netlab.catalogue import update_document
from pytest_netlab.registry import all_suites

from conftest import REPO


def test_every_suite_folder_is_a_listed_package() -> None:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    folders = {f"pytest_netlab.suites.{d.name}" for d in (REPO / "suites").iterdir() if (d / "__init__.py").is_file()}
    assert folders - listed == set(), "add these to packages in setup.cfg, or the wheel will not ship them"


def test_every_registered_suite_has_a_readme_or_is_listed_in_the_catalogue() -> None:
    readme = (REPO / "README.md").read_text()
    for name in all_suites():
        assert f"#### {name} (" in readme


def test_readme_generated_sections_are_current() -> None:
    text = (REPO / "README.md").read_text()
    assert update_document(text) == text, "run: python -m pytest_netlab.catalogue README.md"


def test_typed_marker_ships() -> None:
    assert (REPO / "pytest_netlab" / "py.typed").is_file()
