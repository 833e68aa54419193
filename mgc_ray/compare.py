"""`python -m mgc_ray.compare`: every arch's test figures against the paper's Table 1.

Reads the MLflow store (experiments `mgc_ray/<arch>/<dataset>`) and writes one table
per dataset to --out (markdown), the same rows as CSV beside it, and a figure of the
same (grouped bars per arch) as PNG beside it; all written atomically. For each arch
with runs there are up to three rows, all test split at crop level (the paper's way):

  paper Table 1         the experiment's `mgc.source=paper` run (the paper's figures,
                        as in results/paper_table1.csv)
  ours, paper settings  the newest paper-settings trial that was scored on the test
                        split. A `--paper` search's trial is preferred (it runs every
                        epoch; ASHA may cut the same settings short inside a search),
                        else a search's paper-settings trial. How a search's trial is
                        recognised, first rule that applies:
                          1. the search run's `mgc.paper_trial` tag names it (the runner
                             tags the trial whose settings are the paper's);
                          2. a `--paper` search (param paper_only=True, or `-paper-` in its
                             name) has exactly that one trial;
                          3. its params equal the paper's (`config.is_paper_point`) on every
                             searched hyperparameter.
                        A search that started elsewhere (`start:` in its space) has none.
  ours, best searched   over finished searches that are not `--paper` ones: the best
                        trial (the search run's `mgc.best_trial` tag) with the lowest
                        validation loss (best/val_loss), i.e. chosen without looking at
                        the test split; its test/* metrics (or the search run's own).

Δ columns are ours minus the paper's. Each of our rows has its 95 % intervals (bootstrap over
the test tracks, logged by the search as test_ci95/<metric>/low|high), in a second table and
in the CSV, and its paper_f1 is called higher or lower than the paper's only when the paper's
figure lies outside that interval (said in words under the tables). A run whose figures are
missing shows "–". On any dataset but fma_small the paper's row is a reference point, not a
like-for-like result, and the table says so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from mgc_ray.config import METRIC, PAPER, is_paper_point
from mgc_ray.errors import Parser, UserError, run_cli
from mgc_ray.metrics import TABLE_COLUMNS, definitions, read_interval, verdict
from mgc_ray.results.markdown import cell, interval
from mgc_ray.results.markdown import table as md_table
from mgc_ray.results.report import PAPER_DATASET, reference_note
from mgc_ray.search.tracking import EXPERIMENT_PREFIX, Tag

LABELS = {
    "paper_f1": "F1 (paper)",
    "paper_accuracy": "accuracy (paper)",
    "macro_precision": "precision",
    "macro_recall": "recall",
    "macro_f1": "macro F1",
    "top1_accuracy": "top-1",
}
COLUMNS = tuple((k, LABELS[k]) for k in TABLE_COLUMNS)
DELTAS = ("paper_f1", "paper_accuracy")
KINDS = ("paper Table 1", "ours, paper settings", "ours, best searched")
FIGURE_METRICS = (
    ("paper_f1", "F1 (paper)"),
    ("paper_accuracy", "accuracy (paper)"),
    ("macro_precision", "precision"),
    ("macro_recall", "recall"),
)


def build_parser() -> Parser:
    p = Parser(prog="python -m mgc_ray.compare", description=__doc__.split("\n")[0])
    p.add_argument("--mlflow-uri", default="sqlite:///mlflow.db", help="default: sqlite:///mlflow.db")
    p.add_argument(
        "--out",
        default="results/comparison.md",
        help="the markdown table (default results/comparison.md); .csv and .png go beside it",
    )
    return p


# --- reading the store -------------------------------------------------------
def _test(run) -> dict[str, float]:
    return {k[len("test/") :]: v for k, v in run.data.metrics.items() if k.startswith("test/")}


def _is_paper_search(run) -> bool:
    return run.data.params.get("paper_only") == "True" or "-paper-" in (run.info.run_name or "")


def paper_trial(search, children: list, arch: str):
    """The paper-settings trial of one search (rules in the module docstring), or None."""
    tagged = search.data.tags.get(Tag.PAPER_TRIAL)
    if tagged:
        return next((r for r in children if r.data.tags.get(Tag.TRIAL) == tagged), None)
    if _is_paper_search(search):
        return children[0] if len(children) == 1 else None
    scored = [r for r in children if "test/paper_f1" in r.data.metrics]
    return next((r for r in scored if is_paper_point(arch, r.data.params)), None)


def _best_trial(search, children: list):
    best_id = search.data.tags.get(Tag.BEST_TRIAL)
    return next((r for r in children if r.data.tags.get(Tag.TRIAL) == best_id), None)


def _intervals(run) -> dict[str, tuple[float, float]]:
    """A run's logged 95 % intervals of the test figures (crop level), {metric: (low, high)}."""
    found = {k: read_interval(run.data.metrics, "test", k) for k, _ in COLUMNS}
    return {k: v for k, v in found.items() if v is not None}


def _row(kind: str, metrics: dict, ref: dict, note: str, ci: dict | None = None) -> dict:
    row = {"kind": kind, **{k: metrics.get(k) for k, _ in COLUMNS}, "source": note, "ci": ci or {}}
    for k in DELTAS:
        row[f"delta_{k}"] = (row[k] - ref[k]) if row.get(k) is not None and ref.get(k) is not None else None
    if "paper_f1" in row["ci"] and ref.get("paper_f1") is not None:
        low, high = (v - ref["paper_f1"] for v in row["ci"]["paper_f1"])
        row["vs_paper"] = verdict(low, high, f"the paper's {ref['paper_f1']:.3f}")
    return row


def arch_rows(c, exp_id: str, arch: str) -> list[dict]:
    """The three rows (those that exist) of one arch on one dataset."""
    runs = c.search_runs([exp_id], max_results=5000)
    paper_runs = [r for r in runs if r.data.tags.get(Tag.SOURCE) == "paper"]
    ref = _test(paper_runs[0]) if paper_runs else {}
    ref = {k: ref.get(k, v) for k, v in PAPER[arch].table1.items()}  # the store's, else config.PAPER's
    rows = [{**_row(KINDS[0], ref, ref, "the paper's Table 1"), **{f"delta_{k}": None for k in DELTAS}}]
    searches = sorted(
        (r for r in runs if r.data.tags.get(Tag.SOURCE) == "search" and r.info.status == "FINISHED"),
        key=lambda r: r.info.start_time,
        reverse=True,
    )
    children = {}
    for r in runs:
        if r.data.tags.get(Tag.SOURCE) == "trial":
            children.setdefault(r.data.tags.get(Tag.PARENT), []).append(r)
    candidates = []
    for s in searches:
        t = paper_trial(s, children.get(s.info.run_id, []), arch)
        if t is not None and "test/paper_f1" in t.data.metrics:
            candidates.append((not _is_paper_search(s), -s.info.start_time, s, t))
    if candidates:
        _, _, s, t = min(candidates, key=lambda x: x[:2])
        rows.append(
            _row(
                KINDS[1],
                _test(t),
                ref,
                f"trial {t.info.run_name} of {s.info.run_name} (run {t.info.run_id})",
                _intervals(t),
            )
        )
    best = []
    for s in searches:
        if _is_paper_search(s):
            continue
        t = _best_trial(s, children.get(s.info.run_id, []))
        metrics = _test(t) if t is not None and "test/paper_f1" in t.data.metrics else _test(s)
        if "paper_f1" not in metrics:
            continue
        loss = t.data.metrics.get(METRIC, math.inf) if t is not None else math.inf
        best.append((loss, -s.info.start_time, s, t, metrics))
    if best:
        loss, _, s, t, metrics = min(best, key=lambda x: x[:2])
        who = (
            f"trial {t.info.run_name} of {s.info.run_name} (run {t.info.run_id}, best val loss {loss:.4f})"
            if t is not None
            else f"search {s.info.run_name} (run {s.info.run_id})"
        )
        rows.append(_row(KINDS[2], metrics, ref, who, _intervals(t if t is not None else s)))
    return rows


def collect(uri: str) -> dict[str, dict[str, list[dict]]]:
    """dataset -> arch -> rows, for every `mgc_ray/<arch>/<dataset>` experiment in the store."""
    from mgc_ray.search.tracking import open_store

    c = open_store(uri)
    out: dict[str, dict[str, list[dict]]] = {}
    for exp in c.search_experiments(max_results=5000):
        parts = exp.name.split("/")
        if len(parts) != 3 or parts[0] + "/" != EXPERIMENT_PREFIX or parts[1] not in PAPER:
            continue
        out.setdefault(parts[2], {})[parts[1]] = arch_rows(c, exp.experiment_id, parts[1])
    if not out:
        raise UserError(
            f"the MLflow store {uri} holds no mgc_ray/<arch>/<dataset> experiment: "
            "run a search first (python -m mgc_ray.tune --arch ...) or give its --mlflow-uri"
        )
    return {d: {a: out[d][a] for a in PAPER if a in out[d]} for d in sorted(out)}


# --- writing -----------------------------------------------------------------
def genre_counts(uri: str) -> dict[str, int]:
    """dataset -> number of genres, from its search runs' `n_classes` param (fma_small: 8)."""
    from mgc_ray.search.tracking import open_store

    c = open_store(uri)
    out = {PAPER_DATASET: 8}
    for exp in c.search_experiments(max_results=5000):
        parts = exp.name.split("/")
        if len(parts) != 3 or parts[0] + "/" != EXPERIMENT_PREFIX:
            continue
        for r in c.search_runs([exp.experiment_id], filter_string=f"tags.`{Tag.SOURCE}` = 'search'", max_results=50):
            if r.data.params.get("n_classes", "").isdigit():
                out.setdefault(parts[2], int(r.data.params["n_classes"]))
    return out


def markdown(tables: dict[str, dict[str, list[dict]]], uri: str, genres: dict[str, int] | None = None) -> str:
    """The comparison as markdown; `genres`: dataset -> number of genres (the definitions' k)."""
    genres = genres or {}
    head = ["arch", "row", *(label for _, label in COLUMNS), *(f"Δ {dict(COLUMNS)[k]}" for k in DELTAS)]
    md = [
        "# mgc_ray against the paper's Table 1",
        "",
        f"Test split, crop level (one centred crop per track, the paper's way). From the MLflow store "
        f"`{uri}`; written by `python -m mgc_ray.compare`.",
        "",
    ]
    for dataset, archs in tables.items():
        cells = [
            [
                PAPER[arch].label,
                r["kind"],
                *(cell(r[k]) for k, _ in COLUMNS),
                *("" if r["kind"] == KINDS[0] else cell(r[f"delta_{k}"], True) for k in DELTAS),
            ]
            for arch, rows in archs.items()
            for r in rows
        ]
        notes = [
            f"- {PAPER[arch].label}, {r['kind']}: {r['source']}"
            for arch, rows in archs.items()
            for r in rows
            if r["kind"] != KINDS[0]
        ]
        md += [f"## {dataset}", "", *md_table(head, cells)]
        ours = [(arch, r) for arch, rows in archs.items() for r in rows if r.get("ci")]
        if ours:
            md += ["", "95 % intervals of ours (bootstrap over the test tracks):", ""]
            md += md_table(
                ["arch", "row", *(label for _, label in COLUMNS)],
                [[PAPER[a].label, r["kind"], *(interval(r["ci"].get(k)) for k, _ in COLUMNS)] for a, r in ours],
            )
            md += [""] + [
                f"- {PAPER[a].label}, {r['kind']}: F1 (paper) {r['vs_paper']}." for a, r in ours if r.get("vs_paper")
            ]
        md += ["", reference_note(dataset), "", *notes, ""]
        if dataset in genres:
            md += [definitions(genres[dataset]), ""]
    md += [
        "How rows are chosen: `ours, paper settings` is the newest trial at the paper's settings scored on "
        "the test split (a `--paper` search's first); `ours, best searched` is, over finished searches, the "
        "best trial with the lowest validation loss (never chosen by test figures).",
        "",
    ]
    return "\n".join(md)


def csv_text(tables: dict[str, dict[str, list[dict]]]) -> str:
    import csv
    import io

    keys = [*(k for k, _ in COLUMNS), *(f"delta_{k}" for k in DELTAS)]
    bounds = [(k, end) for k, _ in COLUMNS for end in (0, 1)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "arch", "row", *keys, *(f"{k}_ci95_{('low', 'high')[e]}" for k, e in bounds), "source"])
    for dataset, archs in tables.items():
        for arch, rows in archs.items():
            for r in rows:
                ci = r.get("ci") or {}
                w.writerow(
                    [
                        dataset,
                        arch,
                        r["kind"],
                        *("" if r[k] is None else float(r[k]) for k in keys),
                        *(float(ci[k][e]) if k in ci else "" for k, e in bounds),
                        r["source"],
                    ]
                )
    return buf.getvalue()


def write(tables: dict, out: Path, uri: str) -> list[Path]:
    """Write the markdown, CSV and PNG; return them."""
    from mgc_ray.files import atomic_text, writable_dir
    from mgc_ray.results import plots

    writable_dir(out.parent, f"--out {out}: its folder")
    fig_rows = {
        d: [{"arch": PAPER[a].label, **r} for a, rows in archs.items() for r in rows] for d, archs in tables.items()
    }
    png = plots.comparison_png(
        fig_rows, FIGURE_METRICS, out.with_suffix(".png"), "mgc_ray vs the paper's Table 1 (test split, crop level)"
    )
    md = markdown(tables, uri, genre_counts(uri))
    return [atomic_text(out, md), atomic_text(out.with_suffix(".csv"), csv_text(tables)), png]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() != ".md":
        raise UserError(f"--out {args.out} should name a markdown file (.md); the .csv and .png go beside it")
    tables = collect(args.mlflow_uri)
    files = write(tables, out, args.mlflow_uri)
    n = sum(len(a) for a in tables.values())
    print(
        f"mgc_ray: compared {n} arch/dataset pair(s) in {len(tables)} dataset(s): {', '.join(str(f) for f in files)}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
