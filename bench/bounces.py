"""Bounce parsing throughput: postroom's `parse_bounce` against Sisimai on the same files.

Each round runs two child processes, each pinned to one CPU core, each parsing every file of the
corpus `--repeat` times: the postroom one (this venv's Python, `postroom.bounces.parser`) and the
Sisimai one (`perl -MSisimai`, `Sisimai->make($file)` per file, as an application would call it).
The figures include each interpreter's start-up and imports. The rate is messages divided by the
child's wall time, and divided by its CPU time (user + system, from the kernel's accounting of
the waited-for child), which a busy neighbour on a shared machine does not lower. The order of
the two alternates from round to round; the report gives the median of `--rounds`.

Verification: both children must read every file and say how many gave at least one record; a
run whose child fails exits with 1 and reports no number.

    .venv/bin/python bench/bounces.py                  # corpus from ../shared/data, 3 rounds, markdown
    .venv/bin/python bench/bounces.py --json           # the same as JSON, every round included
    .venv/bin/python bench/bounces.py --repeat 1 --rounds 1 --only postroom

Sisimai is the Debian package `libsisimai-perl` (`apt-get install -y libsisimai-perl`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

POSTROOM_CHILD = """
import sys
from postroom.bounces.parser import parse_bounce
files, repeat = sys.argv[1:-1], int(sys.argv[-1])
found = 0
for _ in range(repeat):
    for name in files:
        with open(name, "rb") as handle:
            found += bool(parse_bounce(handle.read()).recipients)
print(found)
"""

SISIMAI_CHILD = r"""
use strict; use warnings; use Sisimai;
my $repeat = pop @ARGV; my $found = 0;
for (1 .. $repeat) { for my $name (@ARGV) { my $v = Sisimai->make($name); $found++ if $v && @$v; } }
print "$found\n";
"""


@dataclass(frozen=True)
class Run:
    system: str
    messages: int
    with_records: int
    wall_s: float
    cpu_s: float

    @property
    def per_wall_second(self) -> float:
        return self.messages / self.wall_s

    @property
    def per_cpu_second(self) -> float:
        return self.messages / self.cpu_s


def default_corpus() -> Path:
    root = os.environ.get("POSTROOM_TEST_DATA")
    return (Path(root) if root else REPO.parent / "shared" / "data") / "bounces" / "eml"


def run_child(system: str, argv: list[str], messages: int, cpu: int) -> Run:
    """Run one child pinned to `cpu`, return its wall and CPU time; exit 1 when it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO,
                          preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        sys.exit(f"{system} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(system, messages, int(done.stdout.strip()), wall, cpu_s)


def sisimai_version() -> str | None:
    done = subprocess.run(["perl", "-MSisimai", "-e", "print $Sisimai::VERSION"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=default_corpus(), help="directory of .eml files")
    parser.add_argument("--repeat", type=int, default=5, help="passes over the corpus per child (5)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=min(os.sched_getaffinity(0)), help="core to pin to")
    parser.add_argument("--only", choices=["postroom", "sisimai"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    files = sorted(str(p) for p in args.corpus.glob("*.eml"))
    if not files:
        sys.exit(f"no .eml files in {args.corpus}")
    version = sisimai_version()
    systems = [s for s in ("postroom", "sisimai") if args.only in (None, s)]
    if "sisimai" in systems and version is None:
        sys.exit("Sisimai is not installed (apt-get install -y libsisimai-perl), or use --only postroom")
    commands = {
        "postroom": [sys.executable, "-c", POSTROOM_CHILD, *files, str(args.repeat)],
        "sisimai": ["perl", "-e", SISIMAI_CHILD, *files, str(args.repeat)],
    }
    messages = len(files) * args.repeat
    rounds: list[list[Run]] = []
    for number in range(args.rounds):
        order = systems if number % 2 == 0 else list(reversed(systems))
        runs = [run_child(system, commands[system], messages, args.cpu) for system in order]
        for run in runs:
            print(f"round {number + 1}: {run.system:<8} {run.per_wall_second:8.0f} msg/s wall, "
                  f"{run.per_cpu_second:8.0f} msg/s per CPU-s, {run.with_records}/{messages} with records",
                  file=sys.stderr)  # fmt: skip
        rounds.append(sorted(runs, key=lambda r: systems.index(r.system)))

    summary = {
        system: {
            "messages": messages,
            "with_records": rounds[-1][index].with_records,
            "wall_s": statistics.median(r[index].wall_s for r in rounds),
            "cpu_s": statistics.median(r[index].cpu_s for r in rounds),
            "msgs_per_wall_s": statistics.median(r[index].per_wall_second for r in rounds),
            "msgs_per_cpu_s": statistics.median(r[index].per_cpu_second for r in rounds),
        }
        for index, system in enumerate(systems)
    }
    if args.json:
        print(json.dumps({"files": len(files), "repeat": args.repeat, "cpu": args.cpu, "sisimai": version,
                          "summary": summary, "rounds": [[asdict(r) for r in runs] for runs in rounds]},
                         indent=2))  # fmt: skip
        return
    print(f"Bounce parsing, {len(files)} files x {args.repeat} passes, one core (cpu {args.cpu}), "
          f"interpreter start-up included, median of {args.rounds} rounds\n")  # fmt: skip
    print("| system | messages | with records | wall s | CPU s | msg/s (wall) | msg/s per CPU-s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for system, figures in summary.items():
        name = f"Sisimai {version} (Perl)" if system == "sisimai" else "postroom parse_bounce (Python)"
        print(f"| {name} | {figures['messages']} | {figures['with_records']} | {figures['wall_s']:.2f} | "
              f"{figures['cpu_s']:.2f} | {figures['msgs_per_wall_s']:.0f} | {figures['msgs_per_cpu_s']:.0f} |")  # fmt: skip
    if len(summary) == 2:
        ratio = summary["postroom"]["msgs_per_cpu_s"] / summary["sisimai"]["msgs_per_cpu_s"]
        print(f"\npostroom / Sisimai, per CPU-second: {ratio:.2f}")


if __name__ == "__main__":
    main()
