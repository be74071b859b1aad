"""Rewrites `tests/durations.json` (the order `tests/conftest.py` runs files
in) from the logs of pytest runs with `--durations=0`:

    python -m pytest -q -n 2 --dist loadfile --durations=0 tests/models tests/training > tf1.log
    python tests/update_durations.py tensorflow tf1.log tf2.log tf3.log
    python tests/update_durations.py jax jax.log
"""

import collections
import json
import os
import re
import sys

LINE = re.compile(r"([\d.]+)s (?:call|setup|teardown)\s+(\S+?)::")


def main(backend, *logs):
    seconds = collections.Counter()
    for log in logs:
        with open(log) as f:
            for line in f:
                match = LINE.match(line)
                if match:
                    seconds[match.group(2)] += float(match.group(1))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "durations.json")
    with open(path) as f:
        durations = json.load(f)
    durations[backend] = {k: round(v) for k, v in sorted(seconds.items()) if round(v) >= 1}
    with open(path, "w") as f:
        json.dump(durations, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{path}: {len(durations[backend])} files for {backend}")


if __name__ == "__main__":
    main(*sys.argv[1:])
