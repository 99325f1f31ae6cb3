"""End to end: every venue's REST answers 503 at start; the daemon streams from the cached lists.

Every simulator module found (feedd.sim.registry), every venue id it serves: a first run fills
the caches, then every REST endpoint fails and a second run must stream every venue from its
cached list without waiting, and take the fresh list once REST is back. Real sockets on the
real clock; every wait is on records arriving, bounded by ``fail_after``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from endtoend import FAST_FEED, Subscriber, load_text, running, short_tempdir

from feedd.model import MarketData
from feedd.sim import registry
from feedd.sim.server import SimServer

TIMEOUT = 20
#: far longer than a start may take here: a failed fetch must not wait for it
WAIT = 60.0


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-i-") as path:
        yield path


@asynccontextmanager
async def every_simulator() -> AsyncIterator[tuple[list[SimServer[Any]], str]]:
    """A simulator for every group of venue ids of every simulator module, and a config
    naming every venue id they serve."""
    served = [(spec, group, spec.make(group, spec.speed * 5)) for spec in registry().values()
              for group in spec.groups]
    async with trio.open_nursery() as nursery:
        for _, _, sim in served:
            await nursery.start(sim.serve)
        config = FAST_FEED.replace("[feed]\n", f"[feed]\ninstruments_wait = {WAIT}\n", 1)
        for spec, group, sim in served:
            for venue_id in group:
                config += spec.config_section(venue_id, sim)
        yield [sim for _, _, sim in served], config
        nursery.cancel_scope.cancel()


async def every_venue_streams(client: Subscriber, venues: set[str]) -> None:
    """Read records until one of every venue arrived."""
    seen: set[str] = set()

    def all_seen(record: MarketData) -> bool:
        seen.add(record.exchange)
        return seen == venues

    await client.until(all_seen)


async def test_a_start_with_every_rest_endpoint_down_streams_every_venue_from_its_cached_list(
    workdir: Path,
) -> None:
    async with every_simulator() as (sims, text):
        config = load_text(workdir, text)
        venues = set(config.exchanges)
        async with running(config) as daemon:  # the first run fetches, and caches, every list
            with trio.fail_after(TIMEOUT):
                client = await Subscriber.connect(daemon.config.unix.path)
                await every_venue_streams(client, venues)
            assert {v.instruments.source for v in daemon.venues.values()} == {"rest"}

        for sim in sims:
            sim.rest_fail(True)
        async with running(config) as daemon:
            with trio.fail_after(TIMEOUT):  # well within WAIT: a 503 does not wait for it
                client = await Subscriber.connect(daemon.config.unix.path)
                await every_venue_streams(client, venues)
            for venue_id, supervisor in daemon.venues.items():
                assert supervisor.instruments.source == "cache", venue_id
                shown = (await daemon.get_connection_status())["exchanges"][venue_id]["instruments"]
                assert shown["summary"] == "cached (0 min old)"
                assert "503" in shown["last_error"]

            for sim in sims:
                sim.rest_fail(False)
            supervisors = list(daemon.venues.values())
            with trio.fail_after(TIMEOUT):  # the background fetch is retried within max_backoff
                await client.until(lambda r: all(s.instruments.source == "rest" for s in supervisors))
            for venue_id in venues:
                shown = (await daemon.get_connection_status())["exchanges"][venue_id]["instruments"]
                assert (shown["summary"], shown["last_error"]) == ("fetched (0 min old)", None)
