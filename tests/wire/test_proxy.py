"""feedd.wire.proxy: proxy URLs, the environment's choice, and the CONNECT / SOCKS5 client side,
with literal bytes, in whole and in pieces."""

from __future__ import annotations

import pytest

from feedd.errors import ProxyError, TransportError
from feedd.wire.proxy import (
    Credentials,
    HttpConnect,
    ProxyRoute,
    ProxyURL,
    Socks5Connect,
    bypasses,
    choose_proxy,
    environment_proxy,
    parse_proxy_url,
)

HTTP = ProxyURL("http", "127.0.0.1", 3128)
HTTP_AUTH = ProxyURL("http", "127.0.0.1", 3128, Credentials("alice", "s3cret"))
SOCKS = ProxyURL("socks5", "127.0.0.1", 1080)
SOCKS_AUTH = ProxyURL("socks5", "127.0.0.1", 1080, Credentials("alice", "s3cret"))


# ---- proxy URLs -----------------------------------------------------------------------------


def test_a_proxy_url_parses_into_scheme_host_port_and_credentials() -> None:
    assert parse_proxy_url("http://127.0.0.1:3128") == HTTP
    assert parse_proxy_url("http://alice:s3cret@127.0.0.1:3128") == HTTP_AUTH
    assert parse_proxy_url("socks5://127.0.0.1:1080") == SOCKS
    assert parse_proxy_url("socks5h://alice:s3cret@127.0.0.1:1080/") == SOCKS_AUTH
    assert parse_proxy_url("http://[::1]:8080").address == "[::1]:8080"


def test_percent_encoded_credentials_are_decoded_and_encoded_back_for_the_http_client() -> None:
    proxy = parse_proxy_url("http://al%40ice:p%3Ass%2Fw@proxy.example:3128")
    assert proxy.credentials == Credentials("al@ice", "p:ss/w")
    assert proxy.url() == "http://al%40ice:p%3Ass%2Fw@proxy.example:3128"


def test_the_text_of_a_proxy_never_shows_its_credentials() -> None:
    assert str(HTTP_AUTH) == "http://127.0.0.1:3128"
    assert "s3cret" not in repr(HTTP_AUTH)
    assert "s3cret" not in repr(HTTP_AUTH.credentials)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://127.0.0.1:3128", "expected http://"),
        ("ftp://127.0.0.1:21", "expected http://"),
        ("http://127.0.0.1", "no port"),
        ("http://:3128", "no host"),
        ("http://127.0.0.1:99999", "port must be"),
        ("http://127.0.0.1:3128/path", "nothing after"),
        ("http://127.0.0.1:31 28", "spaces"),
        ("http://[::1:3128", "not a proxy URL"),
        ("socks5://:pw@127.0.0.1:1080", "without a user name"),
        ("socks5://" + "u" * 256 + ":pw@127.0.0.1:1080", "255 bytes"),
    ],
)
def test_a_malformed_proxy_url_is_refused_saying_why(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_proxy_url(url)


def test_a_refused_url_is_quoted_without_its_password() -> None:
    with pytest.raises(ValueError) as caught:
        parse_proxy_url("https://alice:s3cret@127.0.0.1:3128")
    assert "s3cret" not in str(caught.value) and "***@127.0.0.1:3128" in str(caught.value)


# ---- which proxy a URL takes ----------------------------------------------------------------


def test_the_configured_proxy_wins_over_the_environment_and_empty_means_direct() -> None:
    environ = {"HTTPS_PROXY": "http://10.0.0.1:3128"}
    assert choose_proxy("wss://stream.binance.com:9443/ws", HTTP, environ) == ProxyRoute(HTTP, "config")
    assert choose_proxy("wss://stream.binance.com:9443/ws", "", environ).proxy is None
    route = choose_proxy("wss://stream.binance.com:9443/ws", None, environ)
    assert route.describe() == "env HTTPS_PROXY: http://10.0.0.1:3128"


def test_wss_and_https_take_https_proxy_lower_case_first_then_all_proxy() -> None:
    both = {"https_proxy": "http://10.0.0.1:1", "HTTPS_PROXY": "http://10.0.0.2:2", "ALL_PROXY": "socks5://10.0.0.3:3"}
    assert environment_proxy("wss://x.example/ws", both).source == "https_proxy"
    assert environment_proxy("https://x.example/api", both).proxy == ProxyURL("http", "10.0.0.1", 1)
    assert environment_proxy("wss://x.example/ws", {"ALL_PROXY": "socks5://10.0.0.3:3"}).proxy == (
        ProxyURL("socks5", "10.0.0.3", 3)
    )
    first = {"wss_proxy": "http://10.0.0.4:4", **both}
    assert environment_proxy("wss://x.example/ws", first).source == "wss_proxy"


def test_ws_takes_lower_case_http_proxy_only_as_curl_does() -> None:
    assert environment_proxy("ws://x.example/ws", {"http_proxy": "http://10.0.0.1:1"}).source == "http_proxy"
    assert environment_proxy("ws://x.example/ws", {"HTTP_PROXY": "http://10.0.0.1:1"}).proxy is None
    assert environment_proxy("ws://x.example/ws", {"HTTPS_PROXY": "http://10.0.0.1:1"}).proxy is None


def test_an_environment_proxy_may_omit_scheme_and_port_as_curl_allows() -> None:
    route = environment_proxy("wss://x.example/", {"HTTPS_PROXY": "proxy.corp"})
    assert route.proxy == ProxyURL("http", "proxy.corp", 1080)


def test_an_unusable_environment_proxy_names_the_variable() -> None:
    with pytest.raises(ValueError, match=r"^HTTPS_PROXY: expected http://"):
        environment_proxy("wss://x.example/", {"HTTPS_PROXY": "https://proxy.corp:443"})


def test_nothing_in_the_environment_is_direct() -> None:
    assert environment_proxy("wss://x.example/", {}).describe() == "direct"


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypassed"),
    [
        ("*", "stream.binance.com", 9443, True),
        ("binance.com", "stream.binance.com", 9443, True),
        ("binance.com", "binance.com", 443, True),
        (".binance.com", "stream.binance.com", 443, True),
        (".binance.com", "binance.com", 443, True),
        ("binance.com", "notbinance.com", 443, False),
        ("bybit.com, binance.com", "stream.binance.com", 443, True),
        ("bybit.com binance.com", "stream.binance.com", 443, True),
        ("binance.com:9443", "stream.binance.com", 9443, True),
        ("binance.com:9443", "stream.binance.com", 443, False),
        ("127.0.0.1", "127.0.0.1", 80, True),
        ("127.0.0.0/8", "127.0.0.5", 80, True),
        ("10.0.0.0/8", "127.0.0.5", 80, False),
        ("::1", "::1", 80, True),
        ("[::1]:8080", "[::1]", 8080, True),
        ("[::1]:8080", "::1", 80, False),
        ("", "stream.binance.com", 443, False),
        ("STREAM.Binance.COM", "stream.binance.com", 443, True),
    ],
)
def test_no_proxy_matches_names_and_their_subdomains_addresses_blocks_and_ports(
    no_proxy: str, host: str, port: int, bypassed: bool
) -> None:
    assert bypasses(no_proxy, host, port) is bypassed


def test_no_proxy_makes_the_route_direct_and_says_so() -> None:
    environ = {"HTTPS_PROXY": "http://10.0.0.1:3128", "NO_PROXY": "localhost,127.0.0.1"}
    assert environment_proxy("wss://127.0.0.1:9443/ws", environ).describe() == "direct (NO_PROXY)"
    assert environment_proxy("wss://stream.binance.com:9443/ws", environ).proxy is not None


# ---- HTTP CONNECT ---------------------------------------------------------------------------


def test_connect_request_names_the_target_in_line_and_host_header() -> None:
    assert HttpConnect(HTTP, "stream.binance.com", 9443).request() == (
        b"CONNECT stream.binance.com:9443 HTTP/1.1\r\nHost: stream.binance.com:9443\r\n\r\n"
    )


def test_connect_request_carries_basic_credentials_when_configured() -> None:
    # base64("alice:s3cret") = YWxpY2U6czNjcmV0
    assert HttpConnect(HTTP_AUTH, "::1", 443).request() == (
        b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n"
        b"Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n\r\n"
    )


def test_a_200_reply_opens_the_tunnel_whatever_the_pieces() -> None:
    reply = b"HTTP/1.1 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n"
    whole = HttpConnect(HTTP, "x.example", 443)
    assert whole.receive_data(reply) == b""
    pieces = HttpConnect(HTTP, "x.example", 443)
    results = [pieces.receive_data(reply[i:i + 1]) for i in range(len(reply))]
    assert results == [None] * (len(reply) - 1) + [b""]


def test_bytes_behind_the_reply_are_handed_back() -> None:
    connect = HttpConnect(HTTP, "x.example", 443)
    assert connect.receive_data(b"HTTP/1.0 200 OK\r\n\r\n\x16\x03\x01") == b"\x16\x03\x01"


def test_a_403_is_a_refusal_naming_proxy_target_and_status() -> None:
    connect = HttpConnect(HTTP, "stream.binance.com", 9443)
    with pytest.raises(ProxyError) as caught:
        connect.receive_data(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    assert str(caught.value) == "proxy 127.0.0.1:3128 refused CONNECT stream.binance.com:9443: 403 Forbidden"
    assert isinstance(caught.value, TransportError)


def test_a_407_says_whether_credentials_were_sent() -> None:
    reply = b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="corp"\r\n\r\n'
    with pytest.raises(ProxyError, match=r'407 Proxy Authentication Required; no credentials configured '
                                         r'\(it asks for Basic realm="corp"\)$'):
        HttpConnect(HTTP, "x.example", 443).receive_data(reply)
    rejected = r"407 Proxy Authentication Required; the credentials were not accepted$"
    with pytest.raises(ProxyError, match=rejected) as caught:
        HttpConnect(HTTP_AUTH, "x.example", 443).receive_data(reply)
    assert "s3cret" not in str(caught.value) and "YWxpY2U6czNjcmV0" not in str(caught.value)


def test_a_401_to_credentials_is_told_as_their_rejection_too() -> None:
    with pytest.raises(ProxyError, match=r": 401 Unauthorized; the credentials were not accepted$"):
        HttpConnect(HTTP_AUTH, "x.example", 443).receive_data(b"HTTP/1.1 401 Unauthorized\r\n\r\n")


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 502 Bad Gateway\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
        b"HTTP/1.1 301 Moved\r\n\r\n",
    ],
)
def test_every_other_status_is_a_refusal(reply: bytes) -> None:
    with pytest.raises(ProxyError, match=r"refused CONNECT x\.example:443: " + reply[9:12].decode()):
        HttpConnect(HTTP, "x.example", 443).receive_data(reply)


def test_what_is_not_an_http_reply_is_an_error() -> None:
    with pytest.raises(ProxyError, match=r"not an HTTP reply: 'SSH-2\.0-OpenSSH'"):
        HttpConnect(HTTP, "x.example", 443).receive_data(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_the_proxy_closing_before_its_reply_ends_is_an_error() -> None:
    connect = HttpConnect(HTTP, "x.example", 443)
    assert connect.receive_data(b"HTTP/1.1 200 ") is None
    with pytest.raises(ProxyError, match=r"closed the connection before answering CONNECT x\.example:443"):
        connect.receive_data(b"")


def test_a_reply_header_without_end_is_cut_off() -> None:
    connect = HttpConnect(HTTP, "x.example", 443)
    assert connect.receive_data(b"HTTP/1.1 200 OK\r\n") is None
    with pytest.raises(ProxyError, match="longer than 16384 bytes"):
        connect.receive_data(b"X-Pad: " + b"a" * 17000)


# ---- SOCKS5 ---------------------------------------------------------------------------------

#: a success reply bound to 127.0.0.1:40000
SUCCESS_V4 = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x9c\x40"


def test_socks5_without_credentials_offers_no_authentication_and_connects_by_name() -> None:
    socks = Socks5Connect(SOCKS, "stream.binance.com", 9443)
    assert socks.data_to_send() == b"\x05\x01\x00"
    assert socks.receive_data(b"\x05\x00") is None
    assert socks.data_to_send() == b"\x05\x01\x00\x03\x12stream.binance.com\x24\xe3"
    assert socks.receive_data(SUCCESS_V4) == b""


def test_socks5_with_credentials_authenticates_by_rfc_1929() -> None:
    socks = Socks5Connect(SOCKS_AUTH, "x.example", 443)
    assert socks.data_to_send() == b"\x05\x02\x00\x02"
    assert socks.receive_data(b"\x05\x02") is None
    assert socks.data_to_send() == b"\x01\x05alice\x06s3cret"
    assert socks.receive_data(b"\x01\x00") is None
    assert socks.data_to_send() == b"\x05\x01\x00\x03\x09x.example\x01\xbb"
    assert socks.receive_data(SUCCESS_V4) == b""


def test_socks5_with_credentials_connects_without_them_when_the_proxy_asks_none() -> None:
    socks = Socks5Connect(SOCKS_AUTH, "x.example", 443)
    socks.data_to_send()
    assert socks.receive_data(b"\x05\x00") is None
    assert socks.data_to_send().startswith(b"\x05\x01\x00\x03")


def test_socks5_sends_an_ip_address_as_one() -> None:
    v4 = Socks5Connect(SOCKS, "127.0.0.1", 80)
    v4.data_to_send()
    v4.receive_data(b"\x05\x00")
    assert v4.data_to_send() == b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50"
    v6 = Socks5Connect(SOCKS, "::1", 80)
    v6.data_to_send()
    v6.receive_data(b"\x05\x00")
    assert v6.data_to_send() == b"\x05\x01\x00\x04" + b"\x00" * 15 + b"\x01\x00\x50"


def test_socks5_replies_in_single_bytes_and_with_every_address_type() -> None:
    by_name = b"\x05\x00\x00\x03\x05proxy\x9c\x40"
    by_v6 = b"\x05\x00\x00\x04" + b"\x00" * 16 + b"\x9c\x40"
    for bound in (SUCCESS_V4, by_name, by_v6):
        socks = Socks5Connect(SOCKS_AUTH, "x.example", 443)
        socks.data_to_send()
        script = b"\x05\x02" + b"\x01\x00" + bound + b"tunnel"
        results = [socks.receive_data(script[i:i + 1]) for i in range(len(script))]
        # None until the reply's last byte opens the tunnel; then each byte is the tunnel's
        assert results == [None] * (len(script) - 7) + [b""] + [bytes([c]) for c in b"tunnel"]


def test_socks5_hands_back_the_bytes_behind_its_reply() -> None:
    socks = Socks5Connect(SOCKS, "x.example", 443)
    socks.data_to_send()
    assert socks.receive_data(b"\x05\x00" + SUCCESS_V4 + b"\x16\x03") == b"\x16\x03"


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (1, "general SOCKS server failure"),
        (2, "connection not allowed by ruleset"),
        (3, "network unreachable"),
        (4, "host unreachable"),
        (5, "connection refused"),
        (6, "TTL expired"),
        (7, "command not supported"),
        (8, "address type not supported"),
        (9, "unassigned reply code"),
    ],
)
def test_every_socks5_refusal_is_told_in_rfc_1928_words(code: int, text: str) -> None:
    socks = Socks5Connect(SOCKS, "stream.binance.com", 9443)
    socks.data_to_send()
    socks.receive_data(b"\x05\x00")
    with pytest.raises(ProxyError) as caught:
        socks.receive_data(bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]))
    assert str(caught.value) == (
        f"proxy 127.0.0.1:1080 refused CONNECT stream.binance.com:9443: {text} (SOCKS5 reply {code})"
    )


def test_socks5_wanting_credentials_when_none_are_configured() -> None:
    socks = Socks5Connect(SOCKS, "x.example", 443)
    socks.data_to_send()
    wants = r"no acceptable authentication method \(it wants credentials; none configured\)"
    with pytest.raises(ProxyError, match=wants):
        socks.receive_data(b"\x05\xff")


def test_socks5_rejecting_the_credentials_never_shows_them() -> None:
    socks = Socks5Connect(SOCKS_AUTH, "x.example", 443)
    socks.data_to_send()
    socks.receive_data(b"\x05\x02")
    with pytest.raises(ProxyError, match=r"username/password authentication failed \(status 1\)") as caught:
        socks.receive_data(b"\x01\x01")
    assert "s3cret" not in str(caught.value) and "alice" not in str(caught.value)


@pytest.mark.parametrize(
    ("script", "problem"),
    [
        (b"\x04\x5a", "version 4: not a SOCKS5 proxy"),
        (b"\x05\x02", "chose authentication method 2, which was not offered"),
        (b"\x05\x00\x04\x00\x00\x01\x00", "not a SOCKS5 reply"),
        (b"\x05\x00\x05\x00\x00\x07\x00", "unknown address type 7"),
    ],
)
def test_socks5_protocol_violations_are_errors(script: bytes, problem: str) -> None:
    socks = Socks5Connect(SOCKS, "x.example", 443)
    socks.data_to_send()
    with pytest.raises(ProxyError, match=problem):
        socks.receive_data(script)


def test_socks5_proxy_closing_mid_handshake_is_an_error() -> None:
    socks = Socks5Connect(SOCKS_AUTH, "x.example", 443)
    socks.data_to_send()
    socks.receive_data(b"\x05\x02")
    closed = r"closed the connection during the handshake \(auth\) for x\.example:443"
    with pytest.raises(ProxyError, match=closed):
        socks.receive_data(b"")
