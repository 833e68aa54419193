"""results/reliability.md: every fault and bad input the tests inject, how often, and what survived.

    python -m benchmarks.reliability            # run the reliability tests, then write the table
    python -m benchmarks.reliability --log F    # write the table from a ledger an earlier run left

The tests record what they inject through the `faults` fixture (tests/conftest.py) into a
JSON-lines ledger named by $MGC_RELIABILITY_LOG, and only after the checks that prove it
survived: a failed test records nothing for the fault it failed on, so the table lists
what held. The ledger is kept beside the table (results/reliability.jsonl).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "reliability.md"
LEDGER = ROOT / "results" / "reliability.jsonl"
TESTS = (
    "tests/e2e/test_integrity.py",
    "tests/e2e/test_checkpoint_seal.py",
    "tests/e2e/test_concurrent.py",
    "tests/e2e/test_full_disk.py",
    "tests/e2e/test_faults.py",
    "tests/e2e/test_faults_at_scale.py",
    "tests/e2e/test_resume.py",
    "tests/unit/test_bad_input.py",
    "tests/e2e/test_prepare.py::test_a_collections_bad_files_are_named_by_their_paths",  # the rest injects no fault it records
    "tests/e2e/test_stores.py",
    "tests/e2e/test_cluster_join.py",
    "tests/e2e/test_gpu.py",  # the GPU check's parts failing, hanging, or finding no torch
)


def run_tests(log: Path, tests: tuple[str, ...]) -> str:
    """Run the tests with the ledger on; returns pytest's last line (its counts)."""
    env = {**os.environ, "MGC_RELIABILITY_LOG": str(log), "PYTHONPATH": str(ROOT)}
    env.setdefault("MGC_HOME", tempfile.mkdtemp(prefix="mgc-reliability-"))
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    lines = [ln for ln in p.stdout.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"pytest exited {p.returncode}"


def render(records: list[dict], outcome: str) -> str:
    rows: dict[str, dict] = {}
    for r in records:
        row = rows.setdefault(r["fault"], {"times": 0, "survived": r["survived"], "tests": []})
        row["times"] += int(r["times"])
        test = r["test"].split("::")[0] + "::" + r["test"].split("::")[1].split("[")[0]
        if test not in row["tests"]:
            row["tests"].append(test)
    bad = {k: v for k, v in rows.items() if k.startswith("bad input:")}
    faults = {k: v for k, v in rows.items() if k not in bad}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Reliability: what the tests inject and what survived",
        "",
        f"Written by `python -m benchmarks.reliability` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC "
        f"({platform.machine()}, {os.cpu_count()} cores, 1-min load {load:.1f}: a shared machine). "
        f"pytest: {outcome}.",
        "",
        "Each row is recorded by the test only after its checks passed; a count is how many times the fault "
        "was injected in that run.",
        "",
        "## Faults",
        "",
        "| fault | injected | what survived | test |",
        "|---|---:|---|---|",
    ]
    lines += [f"| {k} | {v['times']} | {v['survived']} | {', '.join(v['tests'])} |" for k, v in faults.items()]
    lines += [
        "",
        f"## Bad input ({len(bad)} kinds, {sum(v['times'] for v in bad.values())} runs)",
        "",
        "| input | runs | outcome | test |",
        "|---|---:|---|---|",
    ]
    lines += [
        f"| {k[len('bad input: ') :]} | {v['times']} | {v['survived']} | {', '.join(v['tests'])} |"
        for k, v in sorted(bad.items())
    ]
    missing = [t for t in TESTS if not any(r["test"].startswith(t) for r in records)]
    if missing:
        lines += ["", f"Not in this ledger (their faults are not counted above): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__.split("\n")[0])
    p.add_argument("--log", help="render this ledger instead of running the tests")
    p.add_argument("--tests", nargs="*", default=list(TESTS), help="test files to run")
    p.add_argument("--outcome", help="with --log: pytest's summary line of the run that wrote it")
    args = p.parse_args(argv)
    if args.log:
        log, outcome = Path(args.log), args.outcome or "an earlier run's ledger"
    else:
        log = Path(tempfile.mkdtemp(prefix="mgc-ledger-")) / "ledger.jsonl"
        log.touch()
        outcome = run_tests(log, tuple(args.tests))
    records = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    if log.resolve() != LEDGER.resolve():
        LEDGER.write_text("".join(json.dumps(r) + "\n" for r in records))
    OUT.write_text(render(records, outcome))
    print(f"{OUT}: {len(records)} records ({outcome})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
