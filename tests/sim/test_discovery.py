"""Simulator modules are found by discovery, as exchange adapters are: adding a venue's simulator
is adding a module, and the simulator CLI, the demo and the fault harness pick it up."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import feedd.exchanges
import feedd.sim
from feedd.cli.demo import demo_config, demo_simulators
from feedd.config import load_config
from feedd.sim.__main__ import _parser
from feedd.sim.server import SimServer
from feedd.sim.spec import SimSpec

TOY_MODULE = '''
"""A venue's simulator in one module: a protocol, a server, and the SIMULATOR it declares."""

from __future__ import annotations

from feedd.sim.protocol import Accept, Answer, Liveness, Reject, SimConnection
from feedd.sim.server import SimServer
from feedd.sim.spec import SimSpec


class ToyProtocol:
    default_path = "/toy"
    malformed_frame = "{"
    liveness = Liveness()
    refused: frozenset[str] = frozenset()
    swallow_subscribes = False

    def open(self, path: str, query: str) -> Accept[SimConnection] | Reject:
        return Accept(SimConnection(path))

    def receive(self, conn: SimConnection, text: str) -> Answer:
        return Answer(frames=(text,))


class ToySimulator(SimServer[SimConnection]):
    def __init__(self, speed: float = 1.0) -> None:
        super().__init__(ToyProtocol())
        self.speed = speed


SIMULATOR = SimSpec(
    name="toyvenue",
    help="a toy venue",
    groups=(("toy", "toy-futures"),),
    make=lambda venue_ids, speed: ToySimulator(speed),
    symbols={"toy": ("AB",), "toy-futures": ("AB",)},
    spare="CD",
)

__all__ = ["SIMULATOR", "ToySimulator"]
'''


def _forget_discovery() -> None:
    feedd.sim._venue_modules.cache_clear()
    feedd.sim.registry.cache_clear()


@pytest.fixture
def toy_venue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A simulator module ``feedd.sim.toyvenue``, in a directory of its own on the package's path."""
    (tmp_path / "toyvenue.py").write_text(textwrap.dedent(TOY_MODULE), encoding="utf-8")
    monkeypatch.setattr(feedd.sim, "__path__", [*feedd.sim.__path__, str(tmp_path)])
    _forget_discovery()
    yield
    sys.modules.pop("feedd.sim.toyvenue", None)
    monkeypatch.undo()
    _forget_discovery()


def test_every_exchange_venue_id_has_a_simulator_and_every_simulator_an_exchange() -> None:
    assert feedd.sim.venue_ids() == feedd.exchanges.venue_ids()
    for venue_id in feedd.exchanges.venue_ids():
        assert venue_id in feedd.sim.simulator_for(venue_id).venue_ids


def test_the_bundled_simulators_are_found_with_the_venue_ids_they_serve() -> None:
    found = {name: spec.groups for name, spec in feedd.sim.registry().items()}
    assert found == {
        "binance": (("binance",), ("binance-usdm",)),
        "binance-coinm": (("binance-coinm",),),
        "bybit": (("bybit", "bybit-linear", "bybit-inverse"),),
        "bybit-option": (("bybit-option",),),
        "coinbase": (("coinbase",),),
        "hyperliquid": (("hyperliquid",),),
        "coinbase-exchange": (("coinbase-exchange",),),
        "okx": (("okx",),),
    }
    assert feedd.sim.simulator_for("bybit-inverse").name == "bybit"
    with pytest.raises(KeyError, match="no simulator serves venue id 'kraken'"):
        feedd.sim.simulator_for("kraken")


def test_a_venue_modules_public_names_are_importable_from_the_package() -> None:
    from feedd.sim import BinanceSimulator, BybitSimulator, CoinbaseSimulator
    from feedd.sim.binance import BinanceSimulator as direct

    assert BinanceSimulator is direct
    assert {BybitSimulator.__name__, CoinbaseSimulator.__name__} == {"BybitSimulator", "CoinbaseSimulator"}
    assert "BinanceSimulator" in dir(feedd.sim)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchSimulator'"):
        _ = feedd.sim.NoSuchSimulator


@pytest.mark.usefixtures("toy_venue")
def test_a_new_simulator_module_is_found_with_no_edit_elsewhere() -> None:
    spec = feedd.sim.registry()["toyvenue"]
    assert spec.venue_ids == ("toy", "toy-futures")
    assert spec.main == "toy"
    assert feedd.sim.simulator_for("toy-futures") is spec
    assert {"toy", "toy-futures"} <= set(feedd.sim.venue_ids())
    from feedd.sim import ToySimulator  # type: ignore[attr-defined]

    assert isinstance(spec.make(("toy",), 2.0), ToySimulator)
    # the simulator CLI offers it, the demo runs it
    args = _parser().parse_args(["toyvenue", "--speed", "3"])
    sim = spec.simulator(args)
    assert isinstance(sim, ToySimulator) and sim.speed == 3.0
    demo = [served.venue_ids for served in demo_simulators() if served.spec is spec]
    assert demo == [("toy", "toy-futures")]


def test_two_modules_serving_one_venue_id_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    twin = SimSpec(
        name="twin", help="", groups=(("coinbase",),), make=lambda ids, speed: SimServer.__new__(SimServer),
        symbols={"coinbase": ("BTC-USD",)}, spare="ETH-USD",
    )

    class Module:
        SIMULATOR = twin
        __name__ = "feedd.sim.twin"

    bundled = feedd.sim._venue_modules()
    monkeypatch.setattr(feedd.sim, "_venue_modules", lambda: (*bundled, Module))
    feedd.sim.registry.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="venue id 'coinbase' is served by coinbase and twin"):
            feedd.sim.registry()
    finally:
        monkeypatch.undo()
        feedd.sim.registry.cache_clear()


def test_a_spec_must_name_symbols_for_every_venue_id_it_serves() -> None:
    with pytest.raises(ValueError, match="names no symbols for b"):
        SimSpec(name="x", help="", groups=(("a", "b"),), make=lambda ids, speed: None,  # type: ignore[arg-type,return-value]
                symbols={"a": ("S",)}, spare="T")


async def test_the_demo_config_points_every_venue_id_at_its_simulator(tmp_path: Path) -> None:
    served = demo_simulators()
    async with trio.open_nursery() as nursery:
        for each in served:
            await nursery.start(each.sim.serve)
        path = tmp_path / "config.toml"
        path.write_text(demo_config(served, tmp_path), encoding="utf-8")
        config = load_config(path, environ={})
        nursery.cancel_scope.cancel()
    assert sorted(config.exchanges) == feedd.exchanges.venue_ids()
    urls = {venue_id: each.spec.url(each.sim, venue_id) for each in served for venue_id in each.venue_ids}
    assert {venue_id: exchange.url for venue_id, exchange in config.exchanges.items()} == urls
    assert urls["bybit-linear"].endswith("/v5/public/linear")
    assert urls["binance"] != urls["binance-usdm"]  # spot and USD-M run a simulator each
