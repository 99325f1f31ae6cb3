"""Where a daemon's time went: a summary of a py-spy profile (raw folded stacks).

    .venv/bin/python bench/profile_summary.py PROFILE.txt [--top 25]

compare.py --profile DIR writes one profile per feedd run. Prints each function's share of the
samples in itself ("self") and in itself and what it called ("total"), the latter grouped by
function name so that a hop's cost (trio's scheduler, a channel, a socket call) reads directly.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

#: "function (path/to/file.py:123)" -> "function (file.py)"
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*?)(?::\d+)?\)$")


def name(frame: str) -> str:
    match = FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{match['func']} ({Path(match['file']).name})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in Path(args.profile).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [name(f) for f in stack.split(";")]
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    print(f"{samples} samples")
    for title, counter in (("self", own), ("total", total)):
        print(f"\n{title:>6}  function")
        for frame, n in counter.most_common(args.top):
            print(f"{100 * n / samples:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
