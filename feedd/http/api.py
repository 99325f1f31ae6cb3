"""The endpoints of design.md's "HTTP API", over one :class:`~feedd.control.service.WebSocketService`.

Status codes: 400 a malformed request (not JSON, a wrong type, a missing or unknown field, a bad
symbol or channel), 401 a missing or wrong token, 404 an unknown endpoint, venue or symbol, or an
unsubscribe of something not subscribed, 405 a wrong method, 409 a venue that is configured but
not running, or a subscribe overtaken by an unsubscribe of the same symbol, 413 a body over the
limit, 502 the exchange refused the subscription, 504 the exchange did not answer in time (or
the venue's instrument list is still loading).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from feedd.errors import (
    InvalidRequest,
    NoAnswer,
    NotSubscribed,
    SubscriptionRefused,
    Superseded,
    UnknownSymbol,
    UnknownVenue,
    VenueDisabled,
    VenueRefused,
    clipped,
)
from feedd.http.app import App, HttpError, Request, Response, json_response
from feedd.http.page import status_page

if TYPE_CHECKING:
    from feedd.control.service import WebSocketService

PREFIX = "/api/v1/websocket"
FIELDS = ("exchange", "symbol", "channels")

#: the answer to each refusal, most specific class first
_STATUS: tuple[tuple[type[SubscriptionRefused], int], ...] = (
    (InvalidRequest, 400),
    (UnknownVenue, 404),
    (UnknownSymbol, 404),
    (NotSubscribed, 404),
    (VenueDisabled, 409),
    (Superseded, 409),
    (VenueRefused, 502),
    (NoAnswer, 504),
    (SubscriptionRefused, 400),
)


def _refusal(exc: SubscriptionRefused) -> HttpError:
    status = next(code for kind, code in _STATUS if isinstance(exc, kind))
    return HttpError(status, str(exc))


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def subscription_request(body: bytes) -> tuple[str, str, list[str] | None]:
    """``exchange``, ``symbol`` and ``channels`` (None: not given) from a JSON body."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, f"body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HttpError(400, f"body must be a JSON object with exchange, symbol and optionally "
                             f"channels, got {_type_name(value)}")
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise HttpError(400, f"unknown field(s) {clipped(', '.join(map(repr, unknown)))}; "
                             f"allowed: {', '.join(FIELDS)}")
    for name in ("exchange", "symbol"):
        if name not in value:
            raise HttpError(400, f"missing field {name!r}")
        if not isinstance(value[name], str):
            raise HttpError(400, f"{name!r} must be a string, got {_type_name(value[name])}")
    channels = value.get("channels")
    if channels is not None and (
        not isinstance(channels, list) or not all(isinstance(c, str) for c in channels)
    ):
        raise HttpError(400, f"'channels' must be an array of strings, got {_type_name(channels)}")
    return value["exchange"], value["symbol"], channels


def query_request(query: dict[str, list[str]]) -> tuple[str, str, list[str] | None]:
    """The same from ``?exchange=&symbol=[&channels=trades,ticker]``."""
    unknown = sorted(set(query) - set(FIELDS))
    if unknown:
        raise HttpError(400, f"unknown query parameter(s) {clipped(', '.join(map(repr, unknown)))}; "
                             f"allowed: {', '.join(FIELDS)}")
    found: dict[str, str] = {}
    for name, values in query.items():
        if len(values) > 1 and name != "channels":
            raise HttpError(400, f"query parameter {name!r} given {len(values)} times")
        found[name] = ",".join(values)
    for name in ("exchange", "symbol"):
        if name not in found:
            raise HttpError(400, f"missing {name!r}: give a JSON body or ?exchange=...&symbol=...")
    channels = found.get("channels")
    return found["exchange"], found["symbol"], None if channels is None else channels.split(",")


class Api:
    def __init__(self, service: WebSocketService) -> None:
        self.service = service

    async def status(self, request: Request) -> Response:
        return json_response(200, self.service.connection_status())

    async def subscriptions(self, request: Request) -> Response:
        return json_response(200, {"subscriptions": self.service.current_subscriptions()})

    async def subscribe(self, request: Request) -> Response:
        if not request.body.strip():
            raise HttpError(400, 'missing JSON body, e.g. {"exchange": "binance", "symbol": "BTCUSDT"}')
        exchange, symbol, channels = subscription_request(request.body)
        try:
            result = await self.service.subscribe_to_symbol(exchange, symbol, channels)
        except SubscriptionRefused as exc:
            raise _refusal(exc) from None
        return json_response(200, result)

    async def unsubscribe(self, request: Request) -> Response:
        if request.body.strip():
            if request.query:
                raise HttpError(400, "give the subscription in the body or in the query, not both")
            exchange, symbol, channels = subscription_request(request.body)
        else:
            exchange, symbol, channels = query_request(request.query)
        try:
            result = await self.service.unsubscribe_from_symbol(exchange, symbol, channels)
        except SubscriptionRefused as exc:
            raise _refusal(exc) from None
        return json_response(200, result)

    async def history(self, request: Request) -> Response:
        return json_response(200, self.service.history.snapshot())

    async def page(self, request: Request) -> Response:
        return Response(200, status_page(), "text/html; charset=utf-8")

    async def healthz(self, request: Request) -> Response:
        state, reasons = self.service.health()
        if state == "ok":
            return json_response(200, {"status": "ok"})
        return json_response(503, {"status": state, "reasons": reasons})

    async def metrics(self, request: Request) -> Response:
        body, content_type = self.service.metrics.render(request.headers.get("accept"))
        return Response(200, body, content_type)


def build_app(service: WebSocketService) -> App:
    api = Api(service)
    app = App(token=service.config.http.token)
    app.route("GET", f"{PREFIX}/status", api.status)
    app.route("GET", f"{PREFIX}/subscriptions", api.subscriptions)
    app.route("POST", f"{PREFIX}/subscribe", api.subscribe, protected=True)
    app.route("DELETE", f"{PREFIX}/unsubscribe", api.unsubscribe, protected=True)
    app.route("GET", f"{PREFIX}/history", api.history)
    app.route("GET", "/", api.page)
    app.route("GET", "/healthz", api.healthz)
    app.route("GET", "/metrics", api.metrics)
    return app
