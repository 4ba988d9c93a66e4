"""Target declarations and TARGET forms (the usage-error messages are in test_usage_errors.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_netlab.declarations import TargetSpec, load_declarations, resolve_targets
from pytest_netlab.errors import ConfigError
from pytest_netlab.registry import all_suites

SUITES = all_suites()


def resolve(value: str, cwd: Path, selected: tuple[str, ...] = ()) -> list[TargetSpec]:
    return resolve_targets([value], rootdir=cwd, invocation_dir=cwd, suites=SUITES, selected_suites=selected)


def write(path: Path, text: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "netlab.toml").write_text(text)
    return path


def test_full_declaration(tmp_path: Path) -> None:
    write(
        tmp_path,
        '[defaults]\nstartup_timeout = 3\n[targets.srv]\ncommand = "{python} s.py {host} {port}"\nsuites = ["tcp-echo"]\n'
        'ready = "stdout:listening"\nenv = { A = "1" }\nlimits = { memory_mb = 512 }\npoints = { "tcp-echo/*" = 1 }\n'
        'expect_fail = ["tcp-echo/common/ipv6"]\nrequires = ["definitely-not-installed-netlab"]\n',
    )
    (spec,) = load_declarations(tmp_path / "netlab.toml", origin="srv")
    assert spec.startup_timeout == 3 and spec.ready == "stdout:listening" and spec.env == {"A": "1"}
    assert spec.limits == {"memory_mb": 512} and spec.points == {"tcp-echo/*": 1.0}
    assert spec.cwd == tmp_path.resolve() and spec.launched
    assert spec.missing_requirements() == ["definitely-not-installed-netlab"]


def test_glob_of_directories_names_targets_by_folder(tmp_path: Path) -> None:
    for student in ("alice", "bob"):
        write(tmp_path / "subs" / student, '[targets.server]\ncommand = "{python} s.py {host} {port}"\nsuites = ["tcp-echo"]\n')
    (tmp_path / "subs" / "notes.txt").write_text("not a submission")
    names = [spec.name for spec in resolve("subs/*", tmp_path)]
    assert names == ["subs/alice:server", "subs/bob:server"]


def test_pyproject_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.netlab.targets.api]\ncommand = "{python} s.py {host} {port}"\nsuites = ["tcp-echo"]\n')
    (spec,) = resolve("api", tmp_path)
    assert spec.name == "api" and spec.suites == ("tcp-echo",)


def test_inline_and_address_targets(tmp_path: Path) -> None:
    (inline,) = resolve("{python} /x/my_echo.py {host} {port}", tmp_path, ("tcp-echo",))
    assert inline.name == "my_echo.py" and inline.command and inline.suites == ("tcp-echo",)
    (address,) = resolve("tcp://[::1]:8007", tmp_path, ("tcp-echo",))
    assert address.address is not None and (address.address.host, address.address.port) == ("::1", 8007)
    assert not address.launched and address.name == "::1:8007"


def test_reference_expands_to_every_suite(tmp_path: Path) -> None:
    names = [spec.name for spec in resolve("reference", tmp_path)]
    assert "reference:tcp-echo" in names
    assert [spec.name for spec in resolve("reference:tcp-echo", tmp_path)] == ["reference:tcp-echo"]


def test_same_names_get_suffixes(tmp_path: Path) -> None:
    specs = resolve_targets(
        ["{python} a/srv.py {host} {port}", "{python} b/srv.py {host} {port}"],
        rootdir=tmp_path,
        invocation_dir=tmp_path,
        suites=SUITES,
        selected_suites=("tcp-echo",),
    )
    assert [s.name for s in specs] == ["srv.py", "srv.py-2"]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[targets.a]\ncommand = "x {port}"\nready = "http"\nsuites = ["tcp-echo"]\n', "is not a ready probe"),
        ('[targets.a]\ncommand = "x {port}"\nstartup_timeout = 0\nsuites = ["tcp-echo"]\n', "between 0 and 600"),
        ('[targets.a]\ncommand = "x {port}"\nlimits = { ram = 1 }\nsuites = ["tcp-echo"]\n', "unknown limit 'ram'"),
        ('[targets.a]\ncommand = "x"\naddress = "tcp://h:1"\n', "either command or address"),
        ('[server]\ncommand = "x"\n', "unknown table [server]"),
        ("", "declares no targets"),
    ],
)
def test_bad_declarations(tmp_path: Path, toml: str, message: str) -> None:
    write(tmp_path, toml)
    with pytest.raises(ConfigError) as error:
        load_declarations(tmp_path / "netlab.toml", origin="a")
    assert message in str(error.value)
    assert str(tmp_path / "netlab.toml") in str(error.value)
