"""Gather every benchmark report's targets into results/benchmarks/README.md.

    python -m benchmarks.summary                       # after running the scripts (CPU here, GPU on a GPU node)
    python -m benchmarks.summary --results DIR         # another folder of reports (the test's smoke runs)

Reads `<name>_<device>.json` written by `benchmarks.features`, `pipeline`, `trial`, `search`,
`scale`, `gpu_check`, `search_quality`, `stream`, `epoch_gap` and `reservation`, and writes one table of every target: what was asked,
what was measured, on which machine, and met / not met / not measured here. A
GPU session adds its `*_cuda.json` beside the CPU ones and runs this again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from benchmarks import _common as C
from mgc_ray.errors import Parser, UserError, run_cli

SCRIPTS = (
    "features",
    "pipeline",
    "trial",
    "search",
    "scale",
    "gpu_check",
    "search_quality",
    "stream",
    "epoch_gap",
    "reservation",
)

GPU_COMMANDS = """\
The GPU node has torch, torchvision and torchaudio but not ray, optuna, mlflow, librosa or soundfile, and
reaches no registry. On a machine with pip access build the archive of what it lacks
(`tools/offline-bundle.sh .offline`; what it ships and why: docs/cluster.md, "Air-gapped GPU
clusters"), take it along with the checkout, and on the node, from the repository root:

    mkdir -p /tmp/site && tar -xJf .offline/site.tar.xz -C /tmp/site
    export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH

First, the one GPU check (one 8-minute command with the extraction; not timed on a GPU yet; installs
nothing). Its report is rewritten after every part, to `--out`, else `$OUT`, else here; each part has its
own budget and a part's error is recorded as its figure while the next part runs. In this order: the
environment (30 s: versions, numba and pyarrow with this numpy, CUDA, /dev/shm), DenseNet-121 samples/s at
batch 32 eager / channels_last and the best batch (80 s), 1 and 4 packed Tune trials sharing the GPU
(100 s), the GPU's wait in a real Ray Tune trial on an FMA-sized synthetic cache (150 s), the front end's
parity with librosa on the GPU's FFT and its speed (30 s). No GPU was lent to the session that wrote it,
so its figures are not measured yet:

    python -m benchmarks.gpu_check          # writes gpu_check_cuda.json and .md here (or to $OUT)

The other benchmarks, all but scale sized for a 10-minute limit per command (not timed on a GPU yet);
`--work` keeps the demo data between them:

    python -m benchmarks.trial --device cuda --work /tmp/mgcb      # bf16 x channels_last (+ cudnn.benchmark), DenseNet >= 2,000 samples/s?,
                                                                   # Augment's share of a step, GPU data wait on a 2,000-clip demo (written first)
    python -m benchmarks.features --device cuda --work /tmp/mgcb   # our front end on the GPU against the paper's CPU way
    python -m benchmarks.pipeline --device cuda --work /tmp/mgcb --tracks-per-genre 100   # batches to the GPU (workers: CPUs - 1)
    python -m benchmarks.search --device cuda --work /tmp/mgcb --archs baseline_a_2d --tracks-per-genre 40 --seconds 30
    python -m benchmarks.search --device cuda --work /tmp/mgcb --archs densenet --tracks-per-genre 40 --seconds 30
    python -m benchmarks.scale --device cuda --work /tmp/mgcb --tracks-per-genre 1000   # FMA small's 8,000 clips (writing 8,000 mp3s
                                                                   # is the long part: ~30 min on 2 cores here, less on 16)
    python -m benchmarks.summary

Then keep `results/benchmarks/*_cuda.*` beside the CPU reports and commit the regenerated README.md."""


def load_reports(folder: Path) -> list[dict]:
    reports = []
    for path in sorted(folder.glob("*_*.json")):
        try:
            r = json.loads(path.read_text())
        except ValueError:
            continue
        if r.get("name") in SCRIPTS and "targets" in r:
            r["_file"] = path.name
            reports.append(r)
    return reports


def machine_short(m: dict) -> str:
    gpu = m["gpu"] or "no GPU"
    return (
        f"{m['cpu']}, {m['cores']} cores, {gpu}; load {m['load_avg_1min_at_start']} -> {m.get('load_avg_1min_at_end')}"
    )


def to_markdown(reports: list[dict], notes: str) -> list[str]:
    smoke = any(r.get("smoke") for r in reports)
    lines = [
        "# Benchmarks" + (" (SMOKE RUNS: tiny sizes, not measurements)" if smoke else ""),
        "",
        "Speed is shown by these scripts, never by timed assertions in tests (`tests/e2e/test_benchmarks.py` runs "
        "each one's `--smoke` mode). Each prints a short table and writes `<name>_<device>.json` and `.md` here, "
        "naming the machine (CPU model and cores, GPU, library versions, torch threads, load average).",
        "",
        C.UNDER_LOAD,
        "",
        "## Every target",
        "",
    ]
    rows = []
    for r in sorted(reports, key=lambda r: (SCRIPTS.index(r["name"]), r["_file"])):
        for t in r["targets"]:
            status = (
                t["status"]
                if t["status"] != C.NOT_MEASURED
                else f"{C.NOT_MEASURED}" + (" (GPU)" if "GPU" in (t["note"] + t["measured"]) else "")
            )
            rows.append(
                [
                    t["target"],
                    t["goal"],
                    t["measured"],
                    machine_short(r["machine"]),
                    f"**{status}**",
                    t["note"],
                    f"[{r['_file'][:-5]}.md]({r['_file'][:-5]}.md)",
                ]
            )
    lines += C.md_table(["target", "goal", "measured", "machine", "status", "why / note", "report"], rows, "lllllll")
    lines += ["", "## Reports", ""]
    for r in reports:
        lines.append(
            f"- [{r['_file'][:-5]}.md]({r['_file'][:-5]}.md): `python -m benchmarks.{r['name']}` on "
            f"{r['machine']['device']}"
        )
    if notes:
        lines += ["", notes.strip()]
    lines += ["", "## Left for a GPU session", "", GPU_COMMANDS, ""]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m benchmarks.summary", description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=C.RESULTS, help=f"folder of reports (default {C.RESULTS})")
    p.add_argument("--notes", type=Path, help="a markdown file of findings to include (default: FINDINGS.md there)")
    args = p.parse_args(argv)
    reports = load_reports(args.results)
    if not reports:
        raise UserError(f"no benchmark report in {args.results}: run the benchmarks first (docs/benchmarks.md)")
    notes_path = args.notes or args.results / "FINDINGS.md"
    notes = notes_path.read_text() if notes_path.is_file() else ""
    out = args.results / "README.md"
    C.atomic_text(out, "\n".join(to_markdown(reports, notes)))
    C.print_table(["target", "status"], [[t["target"], t["status"]] for r in reports for t in r["targets"]])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
