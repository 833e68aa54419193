"""What a Ray Data crop worker pays to run the crop UDF: the import of the module it lives in.

    python -m benchmarks.crop_worker                     # this checkout (5 fresh interpreters each)
    python -m benchmarks.crop_worker --before DIR        # and an older checkout at DIR, for comparison
    python -m benchmarks.crop_worker --smoke             # 1 interpreter each: checks the script

Ray Data pickles `map_batches`' function by reference to its module, so every worker
process that runs a crop task imports `mgc_ray.data.pipeline` (and whatever it imports) before
its first block. Each figure is a fresh interpreter that has already imported
`ray.data` (which any Ray Data worker has): the extra seconds and peak resident memory
of `import mgc_ray.data.pipeline` and the resident memory it adds, and whether torch / torchaudio
came with it. Median of the runs.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import torch

from benchmarks import _common as C
from mgc_ray.errors import run_cli

NAME = "crop_worker"
ROOT = Path(__file__).resolve().parent.parent
# Resident memory now (VmRSS), not the peak: Linux keeps a process's peak across fork and
# execve, so a probe started by this (torch-importing) script would inherit its peak.
PROBE = """
import sys, time
def rss_mb():
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith('VmRSS:')) / 1024
import ray.data
base = rss_mb()
t = time.perf_counter()
import mgc_ray.data.pipeline
dt = time.perf_counter() - t
print(dt, base, rss_mb(), 'torch' in sys.modules, 'torchaudio' in sys.modules, mgc_ray.data.pipeline.__file__)
"""


def probe(checkout: Path, runs: int) -> dict:
    """Median import cost of `mgc_ray.data.pipeline` from `checkout`, in fresh interpreters."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    rows = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True, cwd=checkout
        ).stdout.split()
        rows.append(out)
    assert all(Path(r[5]).resolve().is_relative_to(checkout.resolve()) for r in rows), "imported another checkout"
    return {
        "checkout": str(checkout),
        "runs": runs,
        "import_s": statistics.median(float(r[0]) for r in rows),
        "rss_before_mb": statistics.median(float(r[1]) for r in rows),
        "rss_after_mb": statistics.median(float(r[2]) for r in rows),
        "extra_rss_mb": statistics.median(float(r[2]) - float(r[1]) for r in rows),
        "torch_loaded": rows[0][3] == "True",
        "torchaudio_loaded": rows[0][4] == "True",
    }


def main(argv: Sequence[str] | None = None) -> dict:
    p = C.parser("python -m benchmarks.crop_worker", __doc__, device=False, ray=False)
    p.add_argument("--before", type=Path, help="an older checkout to measure the same way")
    args = p.parse_args(argv)
    runs = 1 if args.smoke else 5
    rows = {"this checkout": probe(ROOT, runs)}
    if args.before:
        rev = subprocess.run(
            ["git", "-C", str(args.before), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip() or str(args.before)
        rows = {f"before ({rev})": probe(args.before, runs), **rows}
    report = {"name": NAME, "machine": C.machine(torch.device("cpu")), "rows": rows}
    headers = ["checkout", "import s", "extra resident MB", "torch", "torchaudio"]
    table = [
        [k, f"{r['import_s']:.3f}", f"{r['extra_rss_mb']:.1f}", r["torch_loaded"], r["torchaudio_loaded"]]
        for k, r in rows.items()
    ]
    C.print_table(headers, table)
    md = [
        "# What a Ray Data crop worker imports",
        "",
        "Written by `python -m benchmarks.crop_worker`: a fresh interpreter that has imported `ray.data` imports "
        f"`mgc_ray.data.pipeline`, the module of the crop UDF every crop worker unpickles (median of {runs}).",
        "",
        *C.md_table(headers, table, "lrrll"),
        "",
    ]
    C.write_report(C.out_dir(args), NAME, report, md)
    return report


if __name__ == "__main__":
    run_cli(main)
