"""Fixtures for users' own tests (SPEC 5): thin wrappers over the machinery.

Each fixture's docstring is what ``pytest --fixtures`` shows, so each carries
a short usage example. The fixtures own nothing of their own: they hand out
objects from :mod:`pytest_netlab.target`, :mod:`pytest_netlab.rawclient` and
:mod:`pytest_netlab.transcript`, and close them at teardown.
"""

from __future__ import annotations

import random
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pytest

from .declarations import TargetSpec, resolve_targets
from .errors import ConfigError
from .items import SESSION_KEY
from .ports import PortAllocator
from .registry import all_suites
from .rawclient import ScriptedClient
from .target import TargetInstance, TargetPool
from .transcript import Transcript

__all__ = [
    "netlab_seed",
    "netlab_transcript",
    "launch_server",
    "scripted_client",
    "netlab_target",
    "tcp_proxy",
    "udp_proxy",
    "packet_capture",
    "netlab_ca",
    "cert_zoo",
]

_SEED_KEY = pytest.StashKey[int]()


@pytest.fixture(scope="session")
def netlab_seed(request: pytest.FixtureRequest) -> int:
    """The run's seed: ``--netlab-seed``, or a random one printed in the header.

    Example::

        def test_shuffle(netlab_seed):
            rng = random.Random(netlab_seed)
    """
    config = request.config
    netlab = config.stash.get(SESSION_KEY, None)
    if netlab is not None:
        return netlab.seed
    if _SEED_KEY not in config.stash:
        option = config.getoption("netlab_seed", default=None)
        config.stash[_SEED_KEY] = int(option) if option else random.SystemRandom().randrange(1, 2**31)
    return config.stash[_SEED_KEY]


@pytest.fixture
def netlab_transcript() -> Transcript:
    """A fresh transcript that scripted clients of this test record into.

    Example::

        def test_echo(scripted_client, netlab_transcript):
            ...
            print(netlab_transcript.excerpt())
    """
    return Transcript()


@pytest.fixture(scope="session")
def _netlab_pool(request: pytest.FixtureRequest) -> Iterator[TargetPool]:
    workroot = Path(tempfile.mkdtemp(prefix="netlab-fixtures-"))
    pool = TargetPool(PortAllocator(), f"netlab-{uuid.uuid4().hex[:12]}", 1.0, workroot)
    yield pool
    pool.close()
    import shutil

    shutil.rmtree(workroot, ignore_errors=True)


@pytest.fixture
def launch_server(_netlab_pool: TargetPool, tmp_path: Path) -> Iterator[Callable[..., TargetInstance]]:
    """Launch any command as an ephemeral server and wait until it is ready.

    The command is split with shlex (never a shell); ``{host}``, ``{port}``
    and ``{python}`` are filled in. The server is stopped (SIGTERM, then
    SIGKILL, whole process tree) at teardown.

    Example::

        def test_my_server(launch_server, scripted_client):
            server = launch_server("{python} server.py {host} {port}", ready="tcp")
            client = scripted_client(server.address)
            client.send(b"ping")
            assert client.recv_exactly(4) == b"ping"
    """
    started: list[TargetInstance] = []

    def launch(
        command: str,
        *,
        ready: str = "tcp",
        host: str = "127.0.0.1",
        startup_timeout: float = 10.0,
        cwd: Path | str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> TargetInstance:
        spec = TargetSpec(
            name=f"server{len(started) + 1}",
            origin=command,
            source="launch_server()",
            command=command,
            address=None,
            suites=(),
            ready=ready,
            startup_timeout=startup_timeout,
            cwd=Path(cwd) if cwd else Path.cwd(),
            env=dict(env or {}),
            host=host,
        )
        instance = _netlab_pool.fresh(spec, None)
        started.append(instance)
        return instance

    yield launch
    for instance in started:
        _netlab_pool.release(instance)


@pytest.fixture
def scripted_client(netlab_transcript: Transcript) -> Iterator[Callable[..., ScriptedClient]]:
    """Open scripted raw TCP clients that record into ``netlab_transcript``.

    Example::

        def test_half_close(scripted_client, launch_server):
            server = launch_server("{python} echo.py {host} {port}")
            client = scripted_client(server.address, timeout=2.0)
            client.send(b"bye")
            client.shutdown_write()
            assert client.read_until_close() == (b"bye", "eof")
    """
    clients: list[ScriptedClient] = []

    def connect(address: tuple[str, int], **options: Any) -> ScriptedClient:
        options.setdefault("stream", f"conn{len(clients) + 1}")
        client = ScriptedClient.connect(address, transcript=netlab_transcript, **options)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def netlab_target(request: pytest.FixtureRequest, _netlab_pool: TargetPool) -> Iterator[TargetInstance]:
    """The first ``--netlab-target`` (a command), started for this test.

    ``@pytest.mark.netlab(target="NAME")`` picks the target for one test
    (the marker wins over ``--netlab-target``). Skipped when there is no
    command target. Gives its address, logs, ``restart()`` and ``stop()``.

    Example::

        def test_my_extra_rule(netlab_target, scripted_client):
            client = scripted_client(netlab_target.address)
            ...
            netlab_target.restart()
    """
    config = request.config
    netlab = config.stash.get(SESSION_KEY, None)
    marker = request.node.get_closest_marker("netlab")
    wanted = marker.kwargs.get("target") if marker else None
    if wanted:
        try:
            candidates = resolve_targets(
                [wanted], rootdir=config.rootpath, invocation_dir=config.invocation_params.dir, suites=all_suites(), selected_suites=()
            )
        except ConfigError as error:
            raise pytest.UsageError(f"pytest-netlab: @pytest.mark.netlab(target={wanted!r}) on {request.node.nodeid}: {error}") from None
    else:
        candidates = list(netlab.specs) if netlab else []
    specs = [spec for spec in candidates if spec.launched]
    if not specs:
        pytest.skip("no --netlab-target command to start (give --netlab-target=NAME or a command)")
    spec = specs[0]
    suite = all_suites().get(spec.suites[0]) if spec.suites else None
    instance = _netlab_pool.fresh(spec, suite)
    yield instance
    _netlab_pool.release(instance)


@pytest.fixture
def tcp_proxy(netlab_seed: int, netlab_transcript: Transcript) -> Iterator[Callable[..., Any]]:
    """Put a TCP fault proxy between a client and a server (latency, slicing, resets, stalls).

    Returns a factory; each proxy records both directions into
    ``netlab_transcript`` and is closed at teardown. Half-close passes through.

    Example::

        def test_split_request(tcp_proxy, launch_server, scripted_client):
            server = launch_server("{python} server.py {host} {port}")
            proxy = tcp_proxy(server.address, client_to_server=TCPFaults(slice_size=1, slice_pause=0.01))
            client = scripted_client(proxy.address)
            ...
    """
    from .tcp_proxy import TCPFaultProxy

    proxies: list[TCPFaultProxy] = []

    def make(upstream: tuple[str, int], **faults: Any) -> TCPFaultProxy:
        faults.setdefault("seed", netlab_seed)
        faults.setdefault("transcript", netlab_transcript)
        proxy = TCPFaultProxy(upstream, **faults).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def udp_proxy(netlab_seed: int, netlab_transcript: Transcript) -> Iterator[Callable[..., Any]]:
    """Put a seeded lossy UDP proxy between a client and a server (or play the server).

    Faults per direction: loss, Gilbert-Elliott bursts, duplication,
    reordering, delay and jitter, corruption; scripted decisions ("drop the
    first 3 requests"); every decision in ``netlab_transcript``; ``.stats``.

    Example::

        def test_retransmits(udp_proxy, launch_server):
            server = launch_server("{python} udp_server.py {host} {port}", ready="udp")
            proxy = udp_proxy(server.address, script=Script.drop_first(3))
            ...  # point the client at proxy.address
            assert proxy.stats.client_to_server.dropped == 3
    """
    from .udp_proxy import LossyUDPProxy

    proxies: list[LossyUDPProxy] = []

    def make(upstream: tuple[str, int] | None = None, **options: Any) -> LossyUDPProxy:
        options.setdefault("seed", netlab_seed)
        options.setdefault("transcript", netlab_transcript)
        proxy = LossyUDPProxy(upstream, **options)
        proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def packet_capture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Capture the loopback traffic of some ports into a pcap, with parsed packets to assert on.

    Skipped, with the reason and how to enable it, where capture is not
    permitted. The pcap is kept in the test's ``tmp_path`` (pytest keeps the
    last runs' directories).

    Example::

        def test_closes_with_fin(packet_capture, launch_server, scripted_client):
            server = launch_server("{python} server.py {host} {port}")
            with packet_capture([server.port], protocol="tcp") as capture:
                ...  # talk to the server
            assert not resets(capture.packets())
    """
    from .capture import LoopbackCapture, capture_support

    support = capture_support()
    if not support.available:
        pytest.skip(f"packet capture is not available: {support.reason}")
    captures: list[LoopbackCapture] = []

    def make(ports: list[int], *, protocol: str | None = None, name: str = "capture") -> LoopbackCapture:
        capture = LoopbackCapture(ports, tmp_path / f"{name}{len(captures) + 1}.pcap", protocol=protocol)  # type: ignore[arg-type]
        captures.append(capture)
        return capture

    yield make
    for capture in captures:
        capture.close()


@pytest.fixture(scope="session")
def netlab_ca() -> Any:
    """A certificate authority for the whole session (trustme underneath).

    Example::

        def test_tls_server(netlab_ca, tmp_path):
            identity = netlab_ca.issue_server_cert("localhost", "127.0.0.1")
            files = write_tls_files(tmp_path, identity=identity, ca_pem=netlab_ca.trust_pem)
    """
    from .certs import CertificateAuthority

    return CertificateAuthority()


@pytest.fixture(scope="session")
def cert_zoo(netlab_ca: Any) -> Any:
    """Good and bad server certificates (wrong host, expired, self-signed, CN-only...).

    Example::

        def test_client_rejects(cert_zoo):
            entry = cert_zoo["expired"]
            print(entry.defect, entry.verdict, entry.server_hostname)
    """
    from .certs import CertZoo

    return CertZoo(netlab_ca)
