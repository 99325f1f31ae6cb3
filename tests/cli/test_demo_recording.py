"""``feedd demo --recording``: a feedd recording's frames become the simulators' tapes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from feedd.cli.demo import recorded_tapes
from feedd.exchanges import make_venue
from feedd.record.writer import Recorder
from feedd.sim import BinanceSimulator, load_recording
from feedd.sim.replay import bundled_recording, supply

AT = datetime(2026, 12, 7, 9, 14, tzinfo=UTC)


def trade(symbol: str, number: int, price: str) -> str:
    data = {"e": "trade", "E": 1, "s": symbol, "t": number, "p": price, "q": "0.5", "T": 1, "m": True}
    return orjson.dumps({"stream": f"{symbol.lower()}@trade", "data": data}).decode()


@pytest.fixture
def recording(tmp_path: Path) -> Iterator[Path]:
    rec = Recorder(str(tmp_path / "rec"))
    conn = rec.connection(make_venue("binance"), "binance/stream#1", "ws://sim")
    assert conn is not None
    attempt = conn.connected(["btcusdt@trade", "ethusdt@trade"], [])
    conn.received(attempt, AT, [trade("BTCUSDT", 1, "60000.5"), trade("ETHUSDT", 1, "3000.1")])
    conn.received(attempt, AT + timedelta(seconds=0.25), ['{"result":null,"id":1}'])
    conn.received(attempt, AT + timedelta(seconds=0.5), [trade("BTCUSDT", 2, "60001.5")])
    rec.close(0.0)
    yield tmp_path / "rec"
    supply("binance", "trade", None)


def test_a_recordings_frames_become_the_tape_of_their_stream_paced_as_recorded(recording: Path) -> None:
    warnings: list[str] = []
    tapes = recorded_tapes([str(recording)], warnings.append)
    assert warnings == [] and list(tapes) == [("binance", "trade")]
    tape = tapes["binance", "trade"]
    # one symbol's tape (the one with the most frames); the reply frame is in no tape
    assert [p["p"] for p in tape.payloads] == ["60000.5", "60001.5"]
    assert tape.gaps[1:] == (0.5,)


def test_a_supplied_tape_is_what_a_simulator_made_afterwards_plays(recording: Path) -> None:
    tape = recorded_tapes([str(recording)], print)["binance", "trade"]
    supply("binance", "trade", tape)
    assert load_recording("binance", "trade") is tape
    sim = BinanceSimulator(symbols=("BTCUSDT",))
    assert sim.last_trade_id("BTCUSDT") == 0  # its next trade id is the recorded tape's first (1)
    supply("binance", "trade", None)
    assert load_recording("binance", "trade") is bundled_recording("binance", "trade")
