"""RFC 6455 conformance of the native transport: the Autobahn|Testsuite fuzzing server, over ws
and over wss (feedd's own TLS layer), every case but compression (12.*, 13.*: feedd offers no
extension). Exits 1 if any case FAILED.

    /root/.pyenv/versions/2.7.18/bin/pip install autobahntestsuite==0.8.2   # once; Python 2.7
    .venv/bin/python bench/autobahn.py [--wstest PATH] [--only ws|wss] [--cases 1.*,2.*]

The client side is ``feedd.wire.transport.open_native`` echoing every message back, as the suite
expects of a client under test; ``wstest -m fuzzingserver`` runs the cases and judges them. The
summary counts the suite's verdicts (OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED), and
the full HTML/JSON reports stay in the folder it names.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import trio
import trustme

from feedd.errors import TransportError
from feedd.wire.transport import open_native

AGENT = "feedd"
#: how long one case may take (the slowest send 16 MB in small chunks)
CASE_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def run_case(base: str, number: int) -> None:
    """Echo every message of one case until the server ends it (a TransportError then is the
    case's expected end, not a failure: the suite judges what it saw)."""
    try:
        async with open_native(f"{base}/runCase?case={number}&agent={AGENT}", connect_timeout=10) as ws:
            while True:
                for message in await ws.receive_batch():
                    await ws.send(message)
    except TransportError:
        pass


async def control(base: str, path: str) -> str:
    """One request on the suite's control endpoints; returns the text it sent."""
    texts: list[str] = []
    try:
        async with open_native(f"{base}{path}", connect_timeout=10) as ws:
            while True:
                texts += [m if isinstance(m, str) else m.decode() for m in await ws.receive_batch()]
    except TransportError:
        pass
    return "".join(texts)


async def run_suite(scheme: str, wstest: str, work: Path, cases: list[str]) -> Counter[str]:
    port = free_port()
    outdir = work / f"reports-{scheme}"
    spec = work / f"fuzzingserver-{scheme}.json"
    options: dict[str, object] = {
        "url": f"{scheme}://127.0.0.1:{port}",
        "outdir": str(outdir),
        "cases": cases,
        "exclude-cases": ["12.*", "13.*"],
        "exclude-agent-cases": {},
    }
    if scheme == "wss":  # the fuzzing server takes its key and certificate from the spec only
        options.update(key=str(work / "server.key"), cert=str(work / "server.pem"))
    spec.write_text(json.dumps(options))
    # --webport 0: no report web server (its default port, 8080, may be anyone's)
    command = [wstest, "-m", "fuzzingserver", "-s", str(spec), "--webport", "0"]
    log = (work / f"wstest-{scheme}.log").open("wb")
    server = await trio.lowlevel.open_process(command, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    base = f"{scheme}://127.0.0.1:{port}"
    try:
        with trio.fail_after(30):
            while True:  # the suite takes a few seconds to start listening
                try:
                    count = int(await control(base, "/getCaseCount"))
                    break
                except ValueError:
                    await trio.sleep(0.2)
        print(f"{scheme}: {count} cases", flush=True)
        for number in range(1, count + 1):
            with trio.move_on_after(CASE_TIMEOUT) as scope:
                await run_case(base, number)
            if scope.cancelled_caught:
                print(f"{scheme}: case {number} did not end within {CASE_TIMEOUT:g} s", flush=True)
        await control(base, f"/updateReports?agent={AGENT}")
    finally:
        server.terminate()
        await server.wait()
    index = json.loads((outdir / "index.json").read_text())[AGENT]
    verdicts = Counter(result["behavior"] for result in index.values())
    failed = sorted((k for k, r in index.items() if r["behavior"] == "FAILED"),
                    key=lambda k: [int(p) for p in k.split(".")])
    print(f"{scheme}: {dict(verdicts)}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    print(f"{scheme}: reports in {outdir}", flush=True)
    return verdicts


async def main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="feedd-autobahn-", dir="/tmp"))
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(work / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(work / "server.pem"))
    ca.cert_pem.write_to_path(str(work / "ca.pem"))
    os.environ["SSL_CERT_FILE"] = str(work / "ca.pem")  # read when feedd builds its TLS context
    failed = 0
    for scheme in args.only.split(","):
        verdicts = await run_suite(scheme, args.wstest, work, args.cases.split(","))
        failed += verdicts["FAILED"]
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wstest", default="/root/.pyenv/versions/2.7.18/bin/wstest")
    parser.add_argument("--only", default="ws,wss", help="ws, wss or both (comma-separated)")
    parser.add_argument("--cases", default="*", help="case patterns, e.g. 1.*,2.*")
    sys.exit(trio.run(main, parser.parse_args()))
