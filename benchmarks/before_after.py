"""One benchmark at two commits, interleaved in one run: the after / before ratio of its times.

Each round runs the benchmark command once in a checkout of ``--before`` and once in a checkout
of ``--after`` (alternating which goes first), so both see the same machine load; rows of the
two JSON files are matched on every field that is not a time (``--time`` names those) and the
median over rounds of after / before is reported per row (1.0 = unchanged; < 1 faster).

    python benchmarks/before_after.py --before 0637971 --after HEAD --rounds 3 \\
        --time seconds_per_episode --json benchmarks/sfc_before_after.json -- \\
        benchmarks/sfc.py --before-episodes 2 --lockstep 10 --out {out}

``{out}`` in the command is replaced by each run's JSON path. Checkouts are git worktrees under
``--workdir`` (created if missing), run with ``PYTHONPATH`` set to the checkout.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from _common import write_results


def checkout(commit: str, workdir: str) -> str:
    sha = subprocess.run(["git", "rev-parse", "--short", commit], check=True, capture_output=True,
                         text=True).stdout.strip()
    path = os.path.join(workdir, sha)
    if not os.path.isdir(path):
        subprocess.run(["git", "worktree", "add", "--detach", path, sha], check=True, capture_output=True)
    return path


def run(path: str, command: list, out: str) -> list:
    env = dict(os.environ, PYTHONPATH=path)
    argv = [sys.executable] + [c.replace("{out}", out) for c in command]
    subprocess.run(argv, cwd=path, env=env, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)["rows"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--time", nargs="+", required=True, help="row fields that are times")
    parser.add_argument("--ignore", nargs="*", default=[], help="row fields that are neither keys nor times")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "fewshot_before_after"))
    parser.add_argument("--json", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- SCRIPT ARGS ... (with {out})")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or not any("{out}" in c for c in command):
        parser.error("give the benchmark command after --, with {out} where its JSON goes")
    paths = {"before": checkout(args.before, args.workdir), "after": checkout(args.after, args.workdir)}
    results = {"before": [], "after": []}
    for r in range(args.rounds):
        for side in (("before", "after") if r % 2 == 0 else ("after", "before")):
            out = os.path.join(args.workdir, f"{side}_{r}.json")
            results[side].append(run(paths[side], command, out))
            print(f"round {r + 1}: {side} done", flush=True)
    skip = set(args.time) | set(args.ignore)

    def key(row):
        return tuple(sorted((k, json.dumps(v)) for k, v in row.items() if k not in skip))

    rows = []
    for first in results["before"][0]:
        k = key(first)
        row = {f: v for f, v in first.items() if f not in skip}
        for field in args.time:
            if field not in first:
                continue
            ratios = []
            for before, after in zip(results["before"], results["after"]):
                b = [x[field] for x in before if key(x) == k]
                a = [x[field] for x in after if key(x) == k]
                if a and b and a[0] and b[0]:
                    ratios.append(a[0] / b[0])
            before_t = statistics.median(x[field] for run_ in results["before"] for x in run_ if key(x) == k)
            row[f"{field}_before"] = before_t
            row[f"{field}_after_over_before"] = statistics.median(ratios) if ratios else None
            row[f"{field}_ratios"] = ratios
        rows.append(row)
        print({f: (round(v, 3) if isinstance(v, float) else v) for f, v in row.items() if not f.endswith("_ratios")})
    write_results(args.json, rows, before=args.before, after=args.after, rounds=args.rounds,
                  benchmark=" ".join(command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
