"""The HTTP API's client side, for ``feedd status`` / ``subscribe`` / ``unsubscribe``.

Synchronous (the command line makes one request and exits); every failure is an
:class:`ApiError` worded for the person at the terminal, naming the address it tried.
"""

from __future__ import annotations

from typing import Any

import httpx

from feedd.errors import describe

DEFAULT_URL = "http://127.0.0.1:8080"
PREFIX = "/api/v1/websocket"


class ApiError(Exception):
    """The request failed; the message says what happened and where."""


class ApiClient:
    def __init__(self, url: str, *, token: str | None = None, timeout: float = 20.0) -> None:
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON answer of a 2xx; ApiError with the server's ``error`` text otherwise."""
        where = f"{self.url}{path}"
        try:
            response = self._http.request(method, path, json=body)
        except httpx.ConnectError as exc:
            raise ApiError(
                f"cannot connect to the feedd HTTP API at {self.url} ({_reason(exc)}); is feedd "
                "running, and is this its [http] listen address? (--url, --config or $FEEDD_URL)"
            ) from None
        except httpx.TimeoutException:
            raise ApiError(f"no answer from {where} in time") from None
        except httpx.HTTPError as exc:
            raise ApiError(f"{method} {where} failed: {describe(exc)}") from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ApiError(f"{method} {where}: HTTP {response.status_code}, not a feedd answer")
        if response.is_error:
            raise ApiError(f"HTTP {response.status_code}: {answer.get('error', answer)}")
        return answer

    def status(self) -> dict[str, Any]:
        return self.request("GET", f"{PREFIX}/status")

    def subscribe(self, exchange: str, symbol: str, channels: list[str] | None) -> dict[str, Any]:
        return self.request("POST", f"{PREFIX}/subscribe", _body(exchange, symbol, channels))

    def unsubscribe(self, exchange: str, symbol: str, channels: list[str] | None) -> dict[str, Any]:
        return self.request("DELETE", f"{PREFIX}/unsubscribe", _body(exchange, symbol, channels))


def _body(exchange: str, symbol: str, channels: list[str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"exchange": exchange, "symbol": symbol}
    if channels:
        body["channels"] = channels
    return body


def _reason(exc: httpx.ConnectError) -> str:
    text = str(exc)
    return "connection refused" if "refused" in text.lower() else (text or describe(exc))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f} s"
    return str(value)


def format_status(status: dict[str, Any], url: str) -> str:
    """The status document as a table, one row per venue, details below it."""
    lines = [f"feedd at {url}: {status.get('state')}"]
    lines += [f"  {reason}" for reason in status.get("reasons", [])]
    header = ("VENUE", "STATE", "CONNS", "SUBS", "MESSAGES", "RECORDS", "REJECTED", "RECONNECTS",
              "FAILURES", "LAST MESSAGE")
    rows: list[tuple[Any, ...]] = [header]
    details: list[str] = []
    for venue, entry in status.get("exchanges", {}).items():
        subs = entry.get("subscriptions", [])
        rows.append((
            venue, entry.get("state"), len(entry.get("connections", [])),
            sum(len(s.get("channels", [])) for s in subs), entry.get("messages"), entry.get("records"),
            sum(entry.get("rejected", {}).values()), entry.get("reconnects"),
            entry.get("consecutive_failures"), _cell(entry.get("seconds_since_last_message")),
        ))
        if subs:
            shown = ", ".join(
                f"{s['symbol']} ({'+'.join(s['channels'])}"
                f"{'' if s['state'] == 'active' else ', ' + s['state']})"
                for s in subs
            )
            details.append(f"{venue}: {shown}")
        if entry.get("last_error"):
            details.append(f"{venue}: last error: {entry['last_error']}")
    widths = [max(len(_cell(row[i])) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = [
            _cell(value).ljust(width) if i < 2 else _cell(value).rjust(width)
            for i, (value, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines += details
    subscribers = status.get("subscribers", [])
    if subscribers:
        lines.append("subscribers: " + ", ".join(
            f"{s['name']} (delivered {s['delivered']}, dropped {s['dropped']})" for s in subscribers
        ))
    problem = status.get("state_file", {}).get("problem")
    if problem:
        lines.append(f"state file: {problem}")
    return "\n".join(lines)
