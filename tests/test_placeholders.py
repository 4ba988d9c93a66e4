"""Command templates: shlex splitting first, then placeholders, never a shell."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_netlab.errors import ConfigError
from pytest_netlab.placeholders import check_placeholders, fill_command, placeholders_in, split_command


def test_placeholders_in_order_of_first_use() -> None:
    assert placeholders_in("{python} srv.py {host} -p {port} --again {host}") == ["python", "host", "port"]
    assert placeholders_in("echo {{literal}} {port}") == ["port"]


def test_fill_keeps_a_value_with_spaces_in_one_word() -> None:
    words = split_command("{python} serve.py --root {docroot} {port}", source="x", target="t")
    assert fill_command(words, {"python": "/usr/bin/python3", "docroot": "/tmp/a dir", "port": "8080"}) == [
        "/usr/bin/python3",
        "serve.py",
        "--root",
        "/tmp/a dir",
        "8080",
    ]


def test_shell_syntax_is_not_interpreted() -> None:
    words = split_command("sh -c 'echo {port}; rm -rf /' > out.txt", source="x", target="t")
    assert fill_command(words, {"port": "1"}) == ["sh", "-c", "echo 1; rm -rf /", ">", "out.txt"]


def test_literal_braces() -> None:
    assert fill_command(["{{x}}:{port}"], {"port": "7"}) == ["{x}:7"]


def test_unknown_placeholder_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown placeholder \{prot\}.*known placeholders: \{host\} \{port\}"):
        check_placeholders("srv {prot}", source="netlab.toml", target="web")


def test_unbalanced_braces() -> None:
    with pytest.raises(ConfigError, match="unbalanced braces"):
        check_placeholders("srv {port", source="netlab.toml", target="web")


def test_unsplittable_command() -> None:
    with pytest.raises(ConfigError, match="cannot split"):
        split_command("srv 'unterminated", source="netlab.toml", target="web")


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00{}"), min_size=1), min_size=1, max_size=6))
def test_split_round_trips_any_words(words: list[str]) -> None:
    command = " ".join(shlex.quote(word) for word in words)
    assert fill_command(split_command(command, source="x", target="t"), {}) == words
