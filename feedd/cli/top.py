"""``feedd top``: the daemon's status as a live terminal table, redrawn every second.

Two halves, as everywhere in feedd: :func:`render` turns a status document and a history
document (both straight from the HTTP API) into a rich renderable, with no I/O and no clock, so
it is tested on recorded documents; :func:`run_top` fetches, draws and reads the keyboard.

Keys are read from the terminal itself in cbreak mode (no echo, no line buffering, Ctrl-C still
interrupts) by waiting for the descriptor to be readable in the trio loop: no thread.
"""

from __future__ import annotations

import contextlib
import os
import sys
import termios
import tty
from collections.abc import Iterator, Sequence
from io import StringIO
from typing import Any

import attrs
import httpx
import trio
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

from feedd.errors import describe

PREFIX = "/api/v1/websocket"
#: what ``s`` cycles through, in order
SORTS = ("venue", "records/s", "state", "reconnects")
#: the seconds averaged for messages/s and records/s
RATE_SECONDS = 5
#: the span and the width of the records/s sparkline
SPARK_SECONDS = 300
SPARK_WIDTH = 20
_BARS = "▁▂▃▄▅▆▇█"
_STATE_STYLES = {
    "connected": "green", "connecting": "yellow", "backoff": "yellow", "failed": "bold red",
    "idle": "dim", "disabled": "dim", "ok": "bold green", "degraded": "bold yellow", "down": "bold red",
}
#: worst first, for the ``state`` sort
_STATE_ORDER = ("failed", "backoff", "connecting", "connected", "idle", "disabled")


@attrs.frozen
class View:
    """One screen's input: what the API said (or why it could not be reached)."""

    url: str
    status: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    #: the daemon could not be reached: this says where and why
    error: str | None = None
    sort: str = SORTS[0]


def unreachable(url: str, reason: str) -> str:
    return f"cannot reach feedd at {url} ({reason}); is it running, and is this its [http] listen address?"


def sparkline(series: Sequence[float], width: int = SPARK_WIDTH, span: int = SPARK_SECONDS) -> str:
    """The last ``span`` values as ``width`` bars (each the mean of its share), scaled to the
    highest; left-padded with blanks while the history is shorter than the span."""
    values = list(series[-span:])
    per = span / width
    bars: list[float | None] = []
    for index in range(width):
        start = len(values) - span + round(index * per)
        end = len(values) - span + round((index + 1) * per)
        chunk = values[max(0, start):max(0, end)]
        bars.append(sum(chunk) / len(chunk) if chunk else None)
    top = max((b for b in bars if b is not None), default=0.0)
    return "".join(
        " " if b is None else _BARS[0] if top <= 0 else _BARS[min(len(_BARS) - 1, int(b / top * len(_BARS)))]
        for b in bars
    )


def rate(series: Sequence[float] | None) -> float | None:
    if not series:
        return None
    last = series[-RATE_SECONDS:]
    return sum(last) / len(last)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 0.01 else f"{seconds * 1000:.0f} ms"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _error(text: str | None) -> Text:
    return Text(text or "", style="red", no_wrap=True, overflow="ellipsis")


def _state(state: str | None) -> Text:
    return Text(state or "-", style=_STATE_STYLES.get(state or "", ""))


def _sort_key(sort: str, name: str, entry: dict[str, Any], history: dict[str, Any]) -> tuple[Any, ...]:
    if sort == "records/s":
        return (-(rate(history.get("records")) or 0.0), name)
    if sort == "state":
        state = entry.get("state")
        return (_STATE_ORDER.index(state) if state in _STATE_ORDER else len(_STATE_ORDER), name)
    if sort == "reconnects":
        return (-int(entry.get("reconnects") or 0), name)
    return (name,)


#: below this many columns the sparkline is left out, so the numbers keep their room
WIDE = 140
_SPARK_HEADER = f"REC/S LAST {SPARK_SECONDS // 60} MIN"


def venue_table(
    status: dict[str, Any], history: dict[str, Any] | None, sort: str, *, spark: bool = True
) -> Table:
    """One row per venue, then one per connection of it; ``spark``: with the sparkline column."""
    columns = [("VENUE / CONNECTION", "left"), ("STATE", "left"), ("UPTIME", "right"), ("SUBS", "right"),
               ("MSG/S", "right"), ("REC/S", "right"), (_SPARK_HEADER, "left"), ("REJECTED", "right"),
               ("RECONN", "right"), ("LAST MSG", "right"), ("P50", "right"), ("P99", "right")]
    keep = [spark or name != _SPARK_HEADER for name, _ in columns] + [True]
    table = Table(box=None, header_style="bold", pad_edge=False, expand=False)
    for (name, justify), kept in zip(columns, keep, strict=False):
        if kept:
            table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    # the one column that gives way when the terminal is narrow (its cells never wrap)
    table.add_column(Text("LAST ERROR", no_wrap=True, overflow="ellipsis"), max_width=60)

    def add(*cells: RenderableType) -> None:
        table.add_row(*(cell for cell, kept in zip(cells, keep, strict=True) if kept))

    venues: dict[str, Any] = status.get("exchanges") or {}
    series: dict[str, Any] = (history or {}).get("venues") or {}
    order = sorted(venues, key=lambda v: _sort_key(sort, v, venues[v], series.get(v) or {}))
    for name in order:
        entry = venues[name]
        past = series.get(name) or {}
        latency = entry.get("latency") or {}
        subs = sum(len(s.get("channels", [])) for s in entry.get("subscriptions", []))
        add(
            Text(name, style="bold"), _state(entry.get("state")), _duration(entry.get("uptime")), str(subs),
            _rate(rate(past.get("messages"))), _rate(rate(past.get("records"))),
            Text(sparkline(past.get("records") or []), style="cyan"),
            str(sum((entry.get("rejected") or {}).values())), str(entry.get("reconnects", "-")),
            _age(entry.get("seconds_since_last_message")), _ms(latency.get("p50")), _ms(latency.get("p99")),
            _error(entry.get("last_error")),
        )
        for conn in entry.get("connections", []):
            add(
                Text(f"  {conn.get('name')}", style="dim"), _state(conn.get("state")),
                _duration(conn.get("uptime")), str(conn.get("streams", "-")), "", "", "", "",
                str(conn.get("reconnects", "-")), _age(conn.get("seconds_since_last_message")), "", "",
                _error(conn.get("last_error")),
            )
    return table


@attrs.frozen
class _FittedVenueTable:
    """The venue table, built when the width it gets is known (rich asks at render time)."""

    status: dict[str, Any]
    history: dict[str, Any] | None
    sort: str

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield venue_table(self.status, self.history, self.sort, spark=options.max_width >= WIDE)


def subscriber_table(status: dict[str, Any]) -> Table | Text:
    subscribers = status.get("subscribers") or []
    if not subscribers:
        return Text("no subscribers", style="dim")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("SUBSCRIBER", "KIND", "RECORDS SENT", "DROPPED", "PENDING"):
        table.add_column(name, justify="left" if name in ("SUBSCRIBER", "KIND") else "right", no_wrap=True)
    for sub in subscribers:
        dropped = int(sub.get("dropped") or 0)
        table.add_row(str(sub.get("name")), str(sub.get("kind")), str(sub.get("delivered")),
                      Text(str(dropped), style="yellow" if dropped else ""), str(sub.get("pending")))
    return table


def render(view: View) -> RenderableType:
    """The screen for ``view``: a header line, the venue table and the subscriber table; or, when
    the daemon was not reached, the address tried and why."""
    keys = Text("  q quits, s sorts", style="dim")
    if view.error is not None or view.status is None:
        return Group(
            Text.assemble(("feedd top", "bold"), "  ",
                          (view.error or unreachable(view.url, "no answer"), "red")),
            Text("retrying every second", style="dim") + keys,
        )
    status = view.status
    header = Text.assemble(
        ("feedd", "bold"), f" at {view.url}: ", _state(status.get("state")),
        f"  {len(status.get('exchanges') or {})} venue(s)  sort: {view.sort}",
    )
    header += keys
    reasons = [Text(f"  {reason}", style="yellow") for reason in (status.get("reasons") or [])[:5]]
    return Group(header, *reasons, Text(""), _FittedVenueTable(status, view.history, view.sort), Text(""),
                 subscriber_table(status))


def screen_text(view: View, width: int = 160) -> str:
    """The screen as plain text (no colour), as ``--once`` prints it to a pipe."""
    console = Console(file=StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(render(view))
    assert isinstance(console.file, StringIO)
    return console.file.getvalue()


# ---- I/O ---------------------------------------------------------------------------------


async def fetch(client: httpx.AsyncClient, url: str) -> View:
    """The status and the history, or a View that says why they could not be had."""
    try:
        answer = await client.get(f"{PREFIX}/status")
        if answer.status_code != 200:
            return View(url, error=f"{url}{PREFIX}/status answered HTTP {answer.status_code}")
        status = answer.json()
        past = await client.get(f"{PREFIX}/history")
        history = past.json() if past.status_code == 200 else None  # an older daemon has none
    except httpx.ConnectError as exc:
        text = str(exc)
        return View(url, error=unreachable(url, "connection refused" if "refused" in text.lower()
                                           else text or describe(exc)))
    except httpx.TimeoutException:
        return View(url, error=unreachable(url, "no answer in time"))
    except (httpx.HTTPError, ValueError) as exc:
        return View(url, error=unreachable(url, describe(exc)))
    if not isinstance(status, dict):
        return View(url, error=f"{url}{PREFIX}/status: not a feedd status document")
    return View(url, status, history if isinstance(history, dict) else None)


@contextlib.contextmanager
def _cbreak(fd: int) -> Iterator[bool]:
    """The terminal at ``fd`` in cbreak mode for the block; False (and nothing changed) when it
    is not a terminal."""
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run_top(url: str, *, token: str | None = None, once: bool = False, interval: float = 1.0) -> int:
    """``feedd top``: 0 when the user quits; with ``once``, one screen on stdout and 0, or the
    reason on stderr and 1 when the daemon is unreachable."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=max(interval, 2.0)) as client:
        if once:
            view = await fetch(client, url)
            if view.error is not None:
                print(f"feedd top: {view.error}", file=sys.stderr)
                return 1
            Console().print(render(view))
            return 0
        await _live(client, url, interval)
    return 0


@attrs.define
class _Screen:
    """What is on the terminal: the last answer and the chosen sort."""

    live: Live
    view: View
    sort: int = 0

    def draw(self) -> None:
        self.live.update(render(attrs.evolve(self.view, sort=SORTS[self.sort])), refresh=True)


async def _live(client: httpx.AsyncClient, url: str, interval: float) -> None:
    fd = sys.stdin.fileno()
    first = View(url, error=f"connecting to {url}")
    with _cbreak(fd) as keys, Live(render(first), auto_refresh=False, screen=True) as live:
        screen = _Screen(live, first)
        async with trio.open_nursery() as nursery:

            async def poll() -> None:
                deadline = trio.current_time()
                while True:
                    screen.view = await fetch(client, url)
                    screen.draw()
                    deadline += interval
                    await trio.sleep_until(max(deadline, trio.current_time()))

            nursery.start_soon(poll)
            if not keys:
                return  # stdin is no terminal: poll until interrupted
            while True:
                await trio.lowlevel.wait_readable(fd)
                typed = os.read(fd, 64).decode(errors="replace").lower()
                if not typed or "q" in typed:  # end of input, or q
                    nursery.cancel_scope.cancel()
                    return
                if "s" in typed:
                    screen.sort = (screen.sort + 1) % len(SORTS)
                    screen.draw()
