"""The GPU check's report: its targets and its markdown, from whatever parts have run so far."""

from __future__ import annotations

from benchmarks import _common as C

TARGET_BEST, TARGET_32, TARGET_WAIT, TARGET_PACK4 = 5000, 2500, 0.05, 3.0
STATUS_WORDS = {"ok": "done", "failed": "**failed**", "stopped": "**stopped at its budget**", "not run": "not run"}


def figures(report: dict, part: str) -> dict:
    return report["parts"].get(part, {}).get("figures") or {}


def targets(report: dict) -> list[dict]:
    """The check's rows of results/benchmarks/README.md (not measured: no GPU, or the part did not get there)."""
    cuda = report["machine"]["device"].startswith("cuda")
    gpu = report["machine"].get("gpu") or C.NO_GPU
    note = "" if cuda else "run python -m benchmarks.gpu_check on a GPU node"
    speed, pack, trial, front = (figures(report, p) for p in ("speed", "packing", "trial", "frontend"))
    ok = [r for r in speed.get("rows", []) if "samples_per_s" in r]
    best = max(ok, key=lambda r: r["samples_per_s"], default=None)
    b32 = max((r for r in ok if r["batch"] == 32), key=lambda r: r["samples_per_s"], default=None)
    waits = [
        e["train/gpu_wait_share"] for e in trial.get("epochs", [])[1:] if e.get("train/gpu_wait_share") is not None
    ]
    packs = {r["trials"]: r.get("aggregate_samples_per_s") for r in pack.get("rows", [])}
    ratio = packs[4] / packs[1] if packs.get(4) and packs.get(1) else None
    parity = front.get("parity") or {}
    rows = [
        (
            "gpu_check: DenseNet-121 at its best batch, one H200",
            f">= {TARGET_BEST:,} samples/s",
            best and best["samples_per_s"] >= TARGET_BEST,
            best and f"{best['samples_per_s']:,.0f} samples/s (batch {best['batch']}, {best['way']}) on {gpu}",
        ),
        (
            "gpu_check: DenseNet-121 at batch 32, one H200",
            f">= {TARGET_32:,} samples/s",
            b32 and b32["samples_per_s"] >= TARGET_32,
            b32 and f"{b32['samples_per_s']:,.0f} samples/s ({b32['way']}) on {gpu}",
        ),
        (
            "gpu_check: 4 packed DenseNet trials vs one",
            f">= {TARGET_PACK4:g}x",
            ratio and ratio >= TARGET_PACK4,
            ratio and f"{ratio:.2f}x ({packs[4]:,.0f} against {packs[1]:,.0f} samples/s)",
        ),
        (
            "gpu_check: GPU waiting for data in a Ray Tune trial",
            f"< {100 * TARGET_WAIT:g} %",
            waits and max(waits) < TARGET_WAIT,
            waits and f"{100 * max(waits):.1f} % (worst epoch after the first)",
        ),
        (
            "gpu_check: the front end on the GPU against librosa",
            "median < 0.05 dB, max < 1 dB",
            parity.get("within"),
            parity and f"median {parity['median_db']:.4f} dB, max {parity['max_db']:.4f} dB on {gpu}",
        ),
    ]
    out = []
    for name, goal, met, text in rows:
        if cuda and text:
            out.append(C.target(name, goal, text, C.MET if met else C.NOT_MET))
        else:
            measured = C.NO_GPU if not cuda else "not reached (see the part's status)"
            out.append(C.target(name, goal, measured, C.NOT_MEASURED, note))
    return out


def _status_lines(entry: dict) -> list[str]:
    """The part's status, budget and time, and its error with where it was raised."""
    if entry.get("status") == "not run":
        return ["Not run yet.", ""]
    line = f"{STATUS_WORDS.get(entry['status'], entry['status'])} in {entry.get('seconds', 0):.0f} s of its {entry.get('budget_s', 0):.0f}-s budget."  # noqa: E501
    if entry.get("error"):
        line += f" Error: `{entry['error']}` at `{entry.get('where', '?')}`."
    return [line, ""]


def _env(f: dict) -> list[str]:
    rows = []
    for c in f.get("checks", []):
        v = c.get("value")
        if not c["ok"]:
            shown = f"**{c['error']}**"
        elif isinstance(v, dict):
            shown = ", ".join(f"{k} {v[k]}" for k in v if v[k] not in (None, "", [])) or "ok"
        else:
            shown = str(v)
        rows.append([c["check"], "ok" if c["ok"] else "**failed**", shown.replace("|", "/")[:240]])
    return C.md_table(["check", "status", "what it found"], rows, "lll") if rows else []


def _speed(f: dict) -> list[str]:
    lines = C.md_table(
        ["batch", "way", "samples/s", "s / step", "warm-up s", "peak GiB"],
        [
            [
                r["batch"],
                r["way"],
                f"**{C.fmt(r['samples_per_s'])}**" if "samples_per_s" in r else r["error"],
                f"{r['step_s']:.4f}" if "step_s" in r else "",
                f"{r['warmup_s']:.1f}" if "warmup_s" in r else "",
                f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "",
            ]
            for r in f.get("rows", [])
        ],
        "rlrrrr",
    )
    if f.get("skipped"):
        lines += ["", "Skipped (the part's time budget): " + ", ".join(f["skipped"])]
    if f.get("profile"):
        lines += ["", "Where a batch-32 channels_last step spends its time (`torch.profiler`, self time):", ""]
        lines += C.md_table(
            ["op / kernel", "calls / step", "ms / step", "share"],
            [
                [f"`{p['name']}`", p["calls"], f"{p['ms_per_step']:.2f}", f"{100 * p['share']:.1f} %"]
                for p in f["profile"]
            ],
            "lrrr",
        )
    return lines


def _packing(f: dict) -> list[str]:
    if not f:
        return []
    lines = [
        f"Each trial a Ray Tune trial holding {f.get('share', 0):g} of the GPU (and capped at it) and "
        f"{f.get('cpus_per_trial')} CPUs, DenseNet-121 at batch 32; samples/s over the window all of a pack "
        f"trained in together ({f.get('window_s', 0):g} s each).",
        "",
    ]
    rows = []
    for r in f.get("rows", []):
        agg = r.get("aggregate_samples_per_s")
        rows.append(
            [
                r["trials"],
                f"**{C.fmt(agg)}**" if agg else (r.get("skipped") or "; ".join(r.get("errors") or []) or "no window"),
                ", ".join(C.fmt(x) for x in r.get("per_trial_samples_per_s", [])),
                f"{r['overlap_s']:.1f}" if "overlap_s" in r else "",
                "yes" if r.get("started_together") else "no" if "started_together" in r else "",
            ]
        )
    return lines + C.md_table(["trials", "together samples/s", "each alone in its span", "common s", "barrier"], rows)


def _trial(f: dict) -> list[str]:
    if "arch" not in f:
        return []
    lines = [
        f"`{f['arch']}` at the paper's settings on a synthetic cache of {f['tracks']:,} tracks x "
        f"{f['clip_seconds']:g} s"
        + (f" ({f['cache_gb']:.1f} GB, written in {f['cache_write_s']:.0f} s)" if "cache_write_s" in f else "")
        + (
            f"; the search took {f['run_s']:.0f} s (exit code {f.get('rc')}; its output: `{f.get('log')}`)."
            if "run_s" in f
            else "."
        ),  # noqa: E501
        "",
    ]
    lines += C.md_table(
        ["epoch", "device", "samples/s", "GPU wait share", "host data wait s", "train s", "val s"],
        [
            [
                e.get("epoch"),
                e.get("device"),
                C.fmt(e.get("train/samples_per_s") or 0),
                f"{100 * e['train/gpu_wait_share']:.1f} %" if e.get("train/gpu_wait_share") is not None else "(no GPU)",
                f"{e['train/data_wait_s']:.2f}" if e.get("train/data_wait_s") is not None else "",
                f"{e['time/train_s']:.1f}" if e.get("time/train_s") is not None else "",
                f"{e['time/val_s']:.1f}" if e.get("time/val_s") is not None else "",
            ]
            for e in f.get("epochs", [])
        ],
        "rlrrrrr",
    )
    if f.get("log_tail"):
        lines += ["", "The search's last output:", "", "```", f["log_tail"], "```"]
    return lines


def _frontend(f: dict) -> list[str]:
    lines = []
    p = f.get("parity")
    if p:
        lines += [
            f"Parity on {p['device']} against librosa ({', '.join(p['clips'])}): median **{p['median_db']:.4f} dB**, "
            f"max **{p['max_db']:.4f} dB** (bounds {p['bounds_db'][0]:g} / {p['bounds_db'][1]:g} dB: "
            f"{'within' if p['within'] else '**outside**'}); against the same front end on the CPU: max "
            f"{p['max_db_vs_cpu']:.4f} dB.",
            "",
        ]
    if "clips_per_s" in f:
        lines += [
            f"On {f['device']}: **{C.fmt(f['clips_per_s'])} clips/s** in batches of {f['batch']} "
            f"({C.fmt(f['clips_per_s_with_copy'])} with the copy from the host); the paper's way, librosa per "
            f"clip on one CPU core: **{C.fmt(f['librosa_clips_per_s_one_core'])} clips/s** "
            f"({f['clip_seconds']:g}-s clips)."
        ]
    return lines


SECTIONS = (
    ("env", "1. Environment (imports, CUDA, /dev/shm)", _env),
    ("speed", "2. Training samples/s (bf16 autocast, fused Adam, cuDNN autotuner)", _speed),
    ("packing", "3. Packed Tune trials on one GPU", _packing),
    ("trial", "4. A real Ray Tune trial fed by Ray Data: the GPU's wait", _trial),
    ("frontend", "5. The front end (log-mel + z-score)", _frontend),
)


def to_markdown(report: dict) -> list[str]:
    m = report["machine"]
    lines = [
        C.title(
            "GPU check: DenseNet-121 trials on one GPU", report["smoke"], "tiny sizes on the CPU, not a measurement"
        ),
        "",
        f"Written by `python -m benchmarks.gpu_check` on {m['device']} ({m.get('gpu') or C.NO_GPU}), "
        f"{report.get('seconds', 0):.0f} s in so far; rewritten after every part. The plan (each part's budget "
        "and why it is that) is in the JSON beside this file; see the script's docstring for what each part runs.",
        "",
    ]
    lines += C.md_table(
        ["part", "status", "seconds", "budget s", "error (where)"],
        [
            [
                name,
                e.get("status"),
                f"{e['seconds']:.0f}" if "seconds" in e else "",
                f"{e['budget_s']:.0f}" if "budget_s" in e else "",
                f"`{e['error']}` (`{e.get('where')}`)" if e.get("error") else "",
            ]
            for name, e in report["parts"].items()
        ],
        "llrrl",
    )
    for name, heading, render in SECTIONS:
        entry = report["parts"].get(name)
        if entry is None:
            continue
        lines += ["", f"## {heading}", ""] + _status_lines(entry) + render(entry.get("figures") or {})
    lines += ["", "## Targets", ""]
    lines += C.md_table(
        ["target", "goal", "measured", "status", "note"],
        [[x["target"], x["goal"], x["measured"], x["status"], x["note"]] for x in report["targets"]],
        "lllll",
    )
    return lines
