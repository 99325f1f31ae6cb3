"""The benchmark's exchange: Binance combined streams (or Bybit v5 ``publicTrade``) over TLS, each
trade stamped with its send time.

Why not feedd's simulator: its CPU shares the machine's two cores with the daemon being measured,
so the server must cost little per frame, and every trade must carry the moment it was sent
(µs since the epoch, as its quantity) for the subscribers to measure delay. Trade ids are
consecutive, as a venue's are: an id that jumped would be a gap to feedd's backfill (which then
holds the symbol's trades and asks a REST endpoint the benchmark does not serve). The wire is the
simulator's default and an exchange's: **one WebSocket frame per TLS record** (one
``SSL_write`` each). ``frames_per_write=K`` puts K frames in one write instead, so one large
record carries many frames (what the simulator's ``frames_per_write`` does).

When several records are due at once (a flood, or a paced burst) their bytes go to the socket in
one write, which a busy client could not tell from one write per record: it reads whatever the
socket holds either way. TLS is ``ssl.SSLObject`` over memory BIOs; the WebSocket side is the
few lines a server needs (RFC 6455: unmasked frames out, masked frames in).

A connection to ``/v5/public/linear`` speaks Bybit v5 instead (``{"op": "subscribe"}`` acked
with its ``req_id``, ``{"op": "ping"}`` answered with the linear pong) and gets
``publicTrade.BTCUSDT`` frames of :attr:`Server.trades_per_frame` trades each: the
multi-record frames Bybit and Coinbase send, one record of the daemon per element.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import ssl
import time
from collections.abc import Callable

import trio

#: what a connection asks for decides the stream: feedd subscribes to spot ``@trade``,
#: cryptofeed's Binance feed takes trades from ``@aggTrade``; the frames are alike in size
TRADES = {
    "trade": (
        '{"stream":"btcusdt@trade","data":{"e":"trade","E":%d,"s":"BTCUSDT","t":%d,'
        '"p":"61012.34000000","q":"%d","T":%d,"m":true,"M":true}}'
    ),
    "aggTrade": (
        '{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":%d,"s":"BTCUSDT","a":%d,'
        '"p":"61012.34000000","q":"%d","f":100,"l":105,"T":%d,"m":true,"M":true}}'
    ),
}
#: a Bybit v5 publicTrade element; its size ``v`` is the send time, as for Binance
BYBIT_TRADE = (
    '{"T":%d,"s":"BTCUSDT","S":"Buy","v":"%d","p":"61012.34","L":"PlusTick","i":"%d","BT":false}'
)
#: the next trade id (one sequence for every connection: ids never repeat nor jump)
_trade_ids = itertools.count(1)
BYBIT_PONG = b'{"success":true,"ret_msg":"pong","conn_id":"bench","req_id":"","op":"ping"}'
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: frames built and written per step of a flood (per socket write when one frame per record)
FLOOD_STEP = 64


def header(length: int, opcode: int = 0x1) -> bytes:
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return bytes((0x80 | opcode, 126)) + length.to_bytes(2, "big")
    return bytes((0x80 | opcode, 127)) + length.to_bytes(8, "big")


def trade_frame(template: str) -> bytes:
    us = time.time_ns() // 1000
    body = (template % (us // 1000, next(_trade_ids), us, us // 1000)).encode()
    return header(len(body)) + body


def bybit_frame(trades: int) -> bytes:
    """One ``publicTrade`` message with ``trades`` elements, all stamped with the send time."""
    us = time.time_ns() // 1000
    elements = ",".join([BYBIT_TRADE % (us // 1000, us, next(_trade_ids)) for _ in range(trades)])
    ms = us // 1000
    body = f'{{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":{ms},"data":[{elements}]}}'.encode()
    return header(len(body)) + body


class Client:
    """One accepted connection: TLS over memory BIOs, with writes in the order TLS made them."""

    def __init__(self, stream: trio.SocketStream, context: ssl.SSLContext) -> None:
        self.stream = stream
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.lock = trio.Lock()
        self.plain = b""
        self.closed = trio.Event()
        self.template = TRADES["trade"]
        #: Bybit v5 (the path said so): publicTrade frames of several trades each
        self.bybit = False

    async def flush(self) -> None:
        async with self.lock:
            if data := self.outgoing.read():
                await self.stream.send_all(data)

    async def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self.flush()
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("closed during the TLS handshake") from None
                self.incoming.write(data)
        await self.flush()

    async def receive(self) -> bool:
        """Decrypt into :attr:`plain` what is buffered (the handshake's last read may have
        brought records too), else read the socket first; False at the end."""
        size = len(self.plain)
        while True:
            try:
                while chunk := self.tls.read(65536):
                    self.plain += chunk
                return False  # close_notify
            except ssl.SSLWantReadError:
                pass
            if self.outgoing.pending:
                await self.flush()
            if len(self.plain) > size:
                return True
            data = await self.stream.receive_some(65536)
            if not data:
                return False
            self.incoming.write(data)

    async def write(self, payloads: list[bytes]) -> None:
        """Each payload its own TLS record; all of them in one socket write."""
        async with self.lock:
            for payload in payloads:
                self.tls.write(payload)
            await self.stream.send_all(self.outgoing.read())


class Server:
    """Serves one Binance-like stream; :meth:`push` sends trades to the newest client."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.clients: list[Client] = []
        self.ready = trio.Event()
        self.port = 0
        #: trades in one Bybit publicTrade frame
        self.trades_per_frame = 1

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, stream: trio.SocketStream) -> None:
        client = Client(stream, self.context)
        try:
            await client.handshake()
            while b"\r\n\r\n" not in client.plain:
                if not await client.receive():
                    return
            head, client.plain = client.plain.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            path = lines[0].split(" ")[1]
            client.bybit = path.startswith("/v5/public/")
            key = fields["sec-websocket-key"].encode()
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            await client.write([
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            ])
            if "streams=" in path:  # cryptofeed names its streams in the URL
                self._add(client, path)
            await self._read_frames(client)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, EOFError, KeyError):
            pass
        finally:
            client.closed.set()
            if client in self.clients:
                self.clients.remove(client)
            await trio.aclose_forcefully(stream)

    def _add(self, client: Client, streams: str) -> None:
        client.template = TRADES["aggTrade" if "aggTrade" in streams else "trade"]
        self.clients.append(client)
        self.ready.set()

    async def _read_frames(self, client: Client) -> None:
        """Client frames: a request gets its reply (feedd subscribes so), pings their pong."""
        while True:
            buf = client.plain
            while len(buf) >= 6:
                n, start = buf[1] & 0x7F, 6
                if n == 126:
                    n, start = int.from_bytes(buf[2:4], "big"), 8
                elif n == 127:
                    n, start = int.from_bytes(buf[2:10], "big"), 14
                if len(buf) < start + n:
                    break
                mask, body = buf[start - 4 : start], buf[start : start + n]
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(body))
                opcode = buf[0] & 0x0F
                buf = buf[start + n :]
                if opcode == 0x8:
                    await client.write([header(len(payload[:2]), 0x8) + payload[:2]])
                    return
                if opcode == 0x9:
                    await client.write([header(len(payload), 0xA) + payload])
                elif opcode == 0x1 and client.bybit:
                    request = json.loads(payload)
                    if request.get("op") == "ping":
                        await client.write([header(len(BYBIT_PONG)) + BYBIT_PONG])
                        continue
                    reply = json.dumps({"success": True, "ret_msg": "", "conn_id": "bench",
                                        "req_id": request.get("req_id", ""), "op": request.get("op")})
                    await client.write([header(len(reply)) + reply.encode()])
                    if request.get("op") == "subscribe":
                        self._add(client, " ".join(request.get("args", ())))
                elif opcode == 0x1:
                    request = json.loads(payload)
                    result = [] if request.get("method") == "LIST_SUBSCRIPTIONS" else None
                    reply = json.dumps({"result": result, "id": request.get("id")}).encode()
                    await client.write([header(len(reply)) + reply])
                    if request.get("method") == "SUBSCRIBE":
                        self._add(client, " ".join(request.get("params", ())))
            client.plain = buf
            if not await client.receive():
                return

    async def push(self, count: int, rate: float | None, frames_per_write: int = 1,
                   progress: Callable[[int], None] | None = None) -> None:
        """Send ``count`` frames to the newest client: as fast as it reads (``rate`` None), or at
        ``rate`` frames/s in bursts every millisecond (the finest step trio's timers take)."""
        client = self.clients[-1]
        if client.bybit:
            trades = self.trades_per_frame

            def make() -> bytes:
                return bybit_frame(trades)
        else:
            template = client.template

            def make() -> bytes:
                return trade_frame(template)

        if rate is None:
            step = frames_per_write * max(1, FLOOD_STEP // frames_per_write)
        else:
            step = max(1, round(rate / 1000))
        start = trio.current_time()
        sent = 0
        while sent < count:
            n = min(step, count - sent)
            frames = [make() for _ in range(n)]
            if frames_per_write == 1:
                if rate is None:
                    await client.write(frames)
                else:
                    for frame in frames:  # paced: one write per frame, as an exchange sends them
                        await client.write([frame])
            else:
                await client.write([b"".join(frames[i : i + frames_per_write])
                                    for i in range(0, n, frames_per_write)])
            sent += n
            if progress is not None:
                progress(sent)
            if rate is not None:
                await trio.sleep_until(start + sent / rate)
