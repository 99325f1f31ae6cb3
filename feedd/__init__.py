"""feedd: stream live crypto market data from exchange WebSocket feeds to local consumers.

``from feedd import WebSocketService`` is the embeddable service, for a trio or an asyncio program
(see :mod:`feedd.control.service`); it is imported on first use, so ``feedd tail`` and other light
commands never load the HTTP server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from feedd.model import MarketData

if TYPE_CHECKING:
    from feedd.control.service import WebSocketService

__all__ = ["MarketData", "WebSocketService"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "WebSocketService":
        from feedd.control.service import WebSocketService

        return WebSocketService
    raise AttributeError(f"module 'feedd' has no attribute {name!r}")
