"""The real ``feedd run`` process under every fault of every venue at once: it stays up, logs no
error, and every venue streams again afterwards. Real clock, short deadlines (a process cannot
share the test's mock clock)."""

from __future__ import annotations

from typing import Any

import trio
from faultharness import SPECS, SYMBOLS, VENUES, Tape, config_text, read_into, simulators, workdir
from processes import feedd_run

from feedd.sim.faults import Fault, FaultSchedule
from feedd.sim.server import SimServer

STALE_AFTER = 1.0
TIMEOUT = 60
FEED = f"""
[feed]
cache_dir = "cache"
reconnect_interval = 0.05
max_backoff = 0.2
stale_after = {STALE_AFTER}
stable_after = 0.5
connect_timeout = 1.0
max_retries = 0

[unix]
path = "feedd.sock"

[http]
listen = "127.0.0.1:0"
"""


def every_fault(sim: SimServer[Any], symbol: str) -> FaultSchedule:
    """Each kind once, a little apart; lasting ones just long enough to be noticed."""
    faults = [
        Fault(0.0, "abrupt_close"),
        Fault(0.3, "close_1011"),
        Fault(0.6, "malformed"),
        Fault(0.7, "truncated"),
        Fault(0.8, "oversized"),
        Fault(1.2, "half_open", {"duration": 2.0}),
        Fault(3.5, "slow_loris", {"duration": 1.5, "byte_interval": 0.05}),
        Fault(5.5, "subscribe_error", {"symbols": [symbol], "duration": 0.5}),
        Fault(6.5, "swallow_acks", {"duration": 0.5}),
    ]
    if hasattr(sim, "send_server_shutdown"):
        faults.append(Fault(7.5, "server_shutdown", {"close_after": 0.2}))
    return FaultSchedule(faults)


async def test_the_daemon_process_survives_every_fault_of_every_venue_at_once() -> None:
    # the real clock: a dense tape costs no waiting here, a sparse one does (the harness's
    # slower SPEEDS are for the mock clock)
    sims = simulators({venue: spec.speed * 4 for venue, spec in SPECS.items()})
    tape = Tape()
    with workdir() as path:
        async with trio.open_nursery() as nursery:
            for sim in sims.values():
                await nursery.start(sim.serve)
            (path / "config.toml").write_text(config_text(sims, FEED), encoding="utf-8")
            async with feedd_run(path / "config.toml") as daemon:
                with trio.fail_after(TIMEOUT):
                    await daemon.wait_for_log("feedd running")
                    stream = await trio.open_unix_socket(str(path / "feedd.sock"))
                    await stream.send_all(b"{}\n")
                    nursery.start_soon(read_into, stream, tape)
                    await tape.more_of(VENUES, 3)
                    async with trio.open_nursery() as faults:
                        for venue, sim in sims.items():
                            faults.start_soon(every_fault(sim, SYMBOLS[venue][0]).play, sim)
                    await tape.more_of(VENUES, 3)
                assert daemon.process.returncode is None
                log = daemon.text
                await daemon.stop()
            nursery.cancel_scope.cancel()
    assert "ERROR" not in log and "Traceback" not in log
    assert all(f"{venue}/stream#1: connected" in log for venue in VENUES)
