"""feedd with a trio instrument counting what each frame costs in scheduling (a benchmark wrapper).

    FEEDD_COUNTS=/tmp/counts.jsonl bench/counted.py run --config PATH     # as ``feedd run``
    .venv/bin/python bench/compare.py --feedd bench/counted.sh ...        # (a wrapper script)

Runs ``feedd`` as usual, but its ``trio.run`` gets an instrument that counts task steps (each a
task switch: a task resumed by the scheduler), I/O waits (each an ``epoll_wait`` the run loop
made, i.e. a wakeup when the wait blocked), the steps per task function and the garbage
collections (per generation, and their time); when the daemon ends
(compare.py's SIGTERM) one JSON line with the counts is appended to ``$FEEDD_COUNTS``. Divide by
the frames the run received for the per-frame figures of docs/performance.md. The instrument
costs CPU itself: read CPU figures from uninstrumented runs only. With ``FEEDD_CALLS=PATH``
it also counts every Python and C function call (``sys.setprofile``: slow, but exact, which
the CPU figures of a shared machine are not) and writes the most frequent to PATH.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections import Counter
from typing import Any

import trio
from trio.abc import Instrument
from trio.lowlevel import Task


class Counts(Instrument):
    def __init__(self) -> None:
        self.steps = 0
        self.io_waits = 0
        self.blocking_waits = 0
        self.by_task: Counter[str] = Counter()
        #: garbage collections per generation, and the seconds they took
        self.collections = [0, 0, 0]
        self.gc_seconds = 0.0
        self._gc_started = 0.0
        gc.callbacks.append(self._gc)
        #: this thread's CPU ns: in the run loop outside task steps, in task steps, in io waits
        self.loop_cpu = self.step_cpu = self.wait_cpu = 0
        self._mark = time.thread_time_ns()

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.collections[info["generation"]] += 1
            self.gc_seconds += time.perf_counter() - self._gc_started

    def _split(self) -> int:
        now = time.thread_time_ns()
        spent = now - self._mark
        self._mark = now
        return spent

    def before_task_step(self, task: Task) -> None:
        self.loop_cpu += self._split()
        self.steps += 1
        self.by_task[task.name.rsplit(".", 1)[-1]] += 1

    def after_task_step(self, task: Task) -> None:
        self.step_cpu += self._split()

    def before_io_wait(self, timeout: float) -> None:
        self.loop_cpu += self._split()
        self.io_waits += 1
        if timeout > 0:
            self.blocking_waits += 1

    def after_io_wait(self, timeout: float) -> None:
        self.wait_cpu += self._split()

    def dump(self) -> None:
        path = os.environ.get("FEEDD_COUNTS")
        if not path:
            return
        with open(path, "a") as out:
            out.write(json.dumps({
                "task_steps": self.steps, "io_waits": self.io_waits,
                "blocking_io_waits": self.blocking_waits,
                "collections": self.collections, "gc_seconds": round(self.gc_seconds, 4),
                "by_task": dict(self.by_task.most_common(12)),
                "cpu_ms": {"run_loop": self.loop_cpu // 1_000_000,
                           "task_steps": self.step_cpu // 1_000_000,
                           "io_waits": self.wait_cpu // 1_000_000},
            }) + "\n")


def main() -> int:
    counts = Counts()
    real_run = trio.run

    def run(*args: Any, **kwargs: Any) -> Any:
        kwargs["instruments"] = [*kwargs.get("instruments", ()), counts]
        try:
            return real_run(*args, **kwargs)
        finally:
            counts.dump()

    if os.environ.get("FEEDD_CALLS"):
        calls: Counter[str] = Counter()

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "call":
                code = frame.f_code
                calls[f"{code.co_name} ({os.path.basename(code.co_filename)})"] += 1
            elif event == "c_call":
                calls[f"{getattr(arg, '__qualname__', arg)} (C)"] += 1

        def dump_calls() -> None:
            with open(os.environ["FEEDD_CALLS"], "w") as out:
                out.write(f"{sum(calls.values())} calls\n")
                for name, n in calls.most_common(150):
                    out.write(f"{n:9d} {name}\n")

        real_dump = counts.dump

        def dump() -> None:
            sys.setprofile(None)
            real_dump()
            dump_calls()

        counts.dump = dump  # type: ignore[method-assign]
        sys.setprofile(profile)
    trio.run = run  # type: ignore[assignment]
    from feedd.cli.main import main as feedd_main

    return feedd_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
