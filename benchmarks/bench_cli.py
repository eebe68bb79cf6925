"""How fast does the ``shiftlab`` command answer? Wall time of the quick invocations, against importing torch.

Timed, each as a fresh process (``python -m shiftlab ...``, the interpreter's start included):

* ``shiftlab --help``, ``shiftlab probe --help``, ``shiftlab samples``, ``shiftlab kernels``: these load neither
  torch nor matplotlib (tests/test_cli.py checks which modules they load), target < 1 s each;
* ``python -c "import torch"``, for scale: what every command paid before the package's names loaded lazily;
* ``python -c "pass"``: the interpreter's own start, the floor.

The invocations run round by round (one of each per round, in turn), so that the machine's load falls on all of
them alike; reported: the median wall time over the rounds, and the ratio of each median to that of importing torch.

    python benchmarks/bench_cli.py                # 15 rounds
    python benchmarks/bench_cli.py --rounds 31 --json out.json
    python benchmarks/bench_cli.py --source ../main/src   # another checkout: the figures before a change
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: The shiftlab sources timed (``--source`` times another checkout's, e.g. the one before a change).
SOURCE = Path(__file__).resolve().parents[1] / "src"

#: label -> the arguments after ``python``.
INVOCATIONS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "python -c 'import torch'": ["-c", "import torch"],
    "shiftlab --help": ["-m", "shiftlab", "--help"],
    "shiftlab probe --help": ["-m", "shiftlab", "probe", "--help"],
    "shiftlab samples": ["-m", "shiftlab", "samples"],
    "shiftlab kernels": ["-m", "shiftlab", "kernels"],
}


def wall_time(arguments: list[str], source: Path) -> float:
    """Seconds from starting ``python ARGUMENTS`` (shiftlab from ``source``) to its exit (which must be 0)."""
    path = os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "PYTHONPATH": path}
    started = time.perf_counter()
    process = subprocess.run([sys.executable, *arguments], capture_output=True, env=environment, check=False)
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(
            f"python {' '.join(arguments)} failed ({process.returncode}): {process.stderr.decode()[-500:]}"
        )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="runs of every invocation (default: 15)")
    parser.add_argument("--json", default=None, help="also write the medians here")
    parser.add_argument("--source", type=Path, default=SOURCE, help="the src folder of the shiftlab to time")
    args = parser.parse_args()
    for arguments in INVOCATIONS.values():  # warm the file cache: the first start of anything reads from disk
        wall_time(arguments, args.source)
    times: dict[str, list[float]] = {label: [] for label in INVOCATIONS}
    for _ in range(args.rounds):
        for label, arguments in INVOCATIONS.items():
            times[label].append(wall_time(arguments, args.source))
    medians = {label: statistics.median(values) for label, values in times.items()}
    torch = medians["python -c 'import torch'"]
    print(f"shiftlab from {args.source}; python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"median of {args.rounds} runs, each a fresh process")
    print(f"{'invocation':<28} {'median s':>9} {'min s':>7} {'max s':>7} {'/ import torch':>15}")
    for label, values in times.items():
        low, high, ratio = min(values), max(values), medians[label] / torch
        print(f"{label:<28} {medians[label]:>9.3f} {low:>7.3f} {high:>7.3f} {ratio:>15.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": args.rounds, "median_s": medians}, indent=2) + "\n")


if __name__ == "__main__":
    main()
