"""``WebSocketService.asgi_app()``: the HTTP API inside the program's own web app, on its own loop.
Under asyncio the README's Starlette app, driven through httpx's ASGI transport (its requests are
answered by handlers bridged into the trio guest); under trio, served by the program's hypercorn."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from embedded import Simulated, simulated, write_config
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from tools import ROOT, docs_blocks

from feedd import WebSocketService
from feedd.config import load_config

__all__ = ["simulated"]  # the fixture, imported

README = ROOT / "README.md"
TIMEOUT = 20
PREFIX = "/api/v1/websocket"


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="feedd-a-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def config(workdir: Path, simulated: Simulated, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_config(workdir, simulated)
    monkeypatch.setenv("FEEDD_CONFIG", str(path))
    return path


def readme_asgi_example() -> str:
    return docs_blocks(README, "tests/control/test_embedding.py runs these blocks", count=3)[2]


async def exercise(client: httpx.AsyncClient, prefix: str = "") -> dict[str, Any]:
    """Every kind of endpoint once: status, subscribe, listing, unsubscribe, health, metrics, page."""
    answers: dict[str, Any] = {}
    subscribe = {"exchange": "binance", "symbol": "ETHUSDT", "channels": ["trades"]}
    answers["subscribe"] = await client.post(f"{prefix}{PREFIX}/subscribe", json=subscribe)
    answers["status"] = await client.get(f"{prefix}{PREFIX}/status")
    answers["subscriptions"] = await client.get(f"{prefix}{PREFIX}/subscriptions")
    answers["unknown"] = await client.post(f"{prefix}{PREFIX}/subscribe",
                                           json={"exchange": "binance", "symbol": "NOPEUSDT"})
    answers["unsubscribe"] = await client.request(
        "DELETE", f"{prefix}{PREFIX}/unsubscribe", params={"exchange": "binance", "symbol": "ETHUSDT"}
    )
    answers["healthz"] = await client.get(f"{prefix}/healthz")
    answers["metrics"] = await client.get(f"{prefix}/metrics")
    answers["page"] = await client.get(f"{prefix}/")
    return answers


def check(answers: dict[str, Any]) -> None:
    assert answers["subscribe"].status_code == 200, answers["subscribe"].text
    assert answers["subscribe"].json()["added"] == ["trades"]
    status = answers["status"].json()
    assert status["exchanges"]["binance"]["state"] == "connected"
    assert set(status["exchanges"]) == {"binance", "bybit"}
    listed = answers["subscriptions"].json()["subscriptions"]
    assert {"exchange": "binance", "symbol": "ETHUSDT", "channels": ["trades"], "state": "active"} in listed
    assert answers["unknown"].status_code == 404 and "NOPEUSDT" in answers["unknown"].json()["error"]
    assert answers["unsubscribe"].status_code == 200
    assert answers["unsubscribe"].json()["removed"] == ["trades"]
    assert answers["healthz"].status_code in (200, 503) and "status" in answers["healthz"].json()
    assert answers["metrics"].status_code == 200 and "feedd_" in answers["metrics"].text
    assert answers["page"].status_code == 200
    assert answers["page"].headers["content-type"].startswith("text/html")


def test_the_readme_starlette_app_serves_the_feeds_api_under_asyncio(config: Path) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_asgi"}
    exec(compile(readme_asgi_example(), str(README), "exec"), namespace)
    app: Starlette = namespace["app"]
    ws: WebSocketService = namespace["ws"]

    async def program() -> dict[str, Any]:
        async with app.router.lifespan_context(app):  # what the app's server does at start and stop
            await asyncio.wait_for(ws.initialize(), TIMEOUT)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                return await asyncio.wait_for(exercise(client), TIMEOUT)

    check(asyncio.run(program()))


def test_mounted_under_a_prefix_beside_the_apps_own_routes(config: Path) -> None:
    async def program() -> tuple[dict[str, Any], httpx.Response, httpx.Response]:
        async def hello(request: Request) -> PlainTextResponse:
            return PlainTextResponse("the app's own route")

        async with WebSocketService() as ws:
            app = Starlette(routes=[Route("/hello", hello), Mount("/feed", app=ws.asgi_app())])
            await ws.initialize()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                answers = await asyncio.wait_for(exercise(client, "/feed"), TIMEOUT)
                own = await client.get("/hello")
                missing = await client.get("/feed/nope")
        return answers, own, missing

    answers, own, missing = asyncio.run(program())
    check(answers)
    assert own.text == "the app's own route"
    assert missing.status_code == 404 and missing.json() == {"error": "no such endpoint: /nope"}


def test_a_request_while_the_service_is_not_running_is_answered_503(config: Path) -> None:
    async def program() -> httpx.Response:
        ws = WebSocketService()
        transport = httpx.ASGITransport(app=ws.asgi_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.get(f"{PREFIX}/status")

    answer = asyncio.run(program())
    assert answer.status_code == 503 and "initialize" in answer.json()["error"]


def test_the_token_of_the_config_is_demanded_in_the_mounted_app(config: Path, workdir: Path) -> None:
    path = workdir / "token.toml"
    path.write_text(config.read_text(encoding="utf-8") + '[http]\ntoken = "s3cret"\n', encoding="utf-8")

    async def program() -> tuple[int, int]:
        async with WebSocketService(path) as ws:
            await ws.initialize()
            transport = httpx.ASGITransport(app=ws.asgi_app())
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                body = {"exchange": "binance", "symbol": "ETHUSDT"}
                refused = await client.post(f"{PREFIX}/subscribe", json=body)
                allowed = await client.post(f"{PREFIX}/subscribe", json=body,
                                            headers={"authorization": "Bearer s3cret"})
        return refused.status_code, allowed.status_code

    assert asyncio.run(program()) == (401, 200)


@contextlib.asynccontextmanager
async def hypercorn_serving(app: Any) -> AsyncIterator[str]:
    """The program's own hypercorn (trio worker) serving ``app`` on a free port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = HypercornConfig()
    server.bind = [f"fd://{sock.detach()}"]
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve(app, server, shutdown_trigger=stop.wait,
                                                      task_status=task_status))
        yield f"http://127.0.0.1:{port}"
        stop.set()


async def test_under_trio_the_programs_hypercorn_serves_the_api(config: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with WebSocketService(load_config(config)) as ws:
            await ws.initialize()
            async with hypercorn_serving(ws.asgi_app()) as url, httpx.AsyncClient(base_url=url) as client:
                answers = await exercise(client)
    check(answers)
