from __future__ import annotations

import ssl

import pytest
import trio.testing
import trustme

from feedd.wire import transport as transport_module

#: the variables feedd.wire.proxy reads (when no proxy is configured)
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "ws_proxy",
                   "WS_PROXY", "wss_proxy", "WSS_PROXY", "no_proxy", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_machine_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine's own proxy variables must not steer the tests' connections to the simulators
    (a test about them sets its own)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    """Virtual time that jumps ahead whenever every task is blocked: waits cost nothing."""
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def tls_pair(monkeypatch: pytest.MonkeyPatch) -> tuple[trustme.CA, ssl.SSLContext]:
    """A throwaway CA feedd's transports trust, and a server context with a certificate for
    127.0.0.1 (for simulators and test servers speaking wss)."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    monkeypatch.setattr(transport_module, "_default_ssl_context", lambda: client_context)
    return ca, server_context


@pytest.fixture
def tls(tls_pair: tuple[trustme.CA, ssl.SSLContext]) -> ssl.SSLContext:
    """The server side of :func:`tls_pair`."""
    return tls_pair[1]
