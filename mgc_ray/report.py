"""What a search leaves under results/: leaderboard, best config, summary, figures."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import yaml

from mgc_ray import plots
from mgc_ray.config import PAPER, TrainConfig

COLUMNS = ("paper_f1", "paper_accuracy", "macro_precision", "macro_recall", "macro_f1", "top1_accuracy")
DEFINITIONS = """Metric definitions (the paper's, SPEC section 1):
- precision, recall: macro averages over the 8 genres;
- paper_f1: harmonic mean of macro precision and macro recall (not the mean of per-class F1);
- paper_accuracy: mean over genres of one-vs-rest accuracy (TP+TN)/N; with 8 balanced genres
  it equals 1 - (1 - top1)/4, so it reads high;
- macro_f1: mean of per-class F1 (scikit-learn's); top1_accuracy: share of tracks right.
Ours are test-split figures at crop level (one centred crop per track, the paper's way)."""


def _atomic_text(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def summary_rows(arch: str, rows: dict) -> list[dict]:
    """Paper Table 1 row, our paper-settings trial and our best trial, same columns."""
    preset = PAPER[arch]
    out = [{"row": f"paper Table 1 ({preset.label})", **{k: preset.table1.get(k) for k in COLUMNS}}]
    for role, label in (("paper", "ours, paper settings"), ("best", "ours, best searched")):
        if role in rows:
            crop = rows[role]["scores"]["crop"]
            out.append({"row": label, **{k: crop.get(k) for k in COLUMNS}})
    ref = preset.table1["paper_f1"]
    for r in out[1:]:
        r["delta_paper_f1"] = r["paper_f1"] - ref
    return out


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def summary_table(arch: str, summary: list[dict]) -> str:
    head = ["", *COLUMNS, "Δ paper_f1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        vals = [_fmt(r.get(k)) for k in COLUMNS]
        delta = r.get("delta_paper_f1")
        lines.append("| " + " | ".join([r["row"], *vals, "" if delta is None else f"{delta:+.3f}"]) + " |")
    return f"\n{arch}: test split vs the paper's Table 1\n" + "\n".join(lines) + "\n"


def _history(result) -> list[dict]:
    df = result.metrics_dataframe
    if df is None or df.empty:
        return []
    return [{k: v for k, v in row.items()} for row in df.to_dict("records")]


def leaderboard_rows(grid) -> list[dict]:
    rows = []
    for r in grid:
        m, cfg = r.metrics or {}, r.config or {}
        rows.append({"trial_id": m.get("trial_id", Path(str(r.path)).name),
                     "status": "ERROR" if r.error is not None else "OK",
                     "epochs": m.get("training_iteration", 0),
                     "best_val_loss": m.get("best/val_loss"), "best_epoch": m.get("best/epoch"),
                     "best_val_paper_f1": m.get("best/val_paper_f1"), "best_val_macro_f1": m.get("best/val_macro_f1"),
                     **{k: cfg.get(k) for k in ("lr", "weight_decay", "batch_size", "window", "n_mels", "crop_seconds")}})
    return sorted(rows, key=lambda r: (r["best_val_loss"] is None, r["best_val_loss"] or 0.0))


def write_search_results(out: Path, plan, grid, rows: dict, label_names: list[str]) -> list[Path]:
    """Write the leaderboard, best config, summary, test metrics and figures; return the files."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    best = rows["best"]
    files = []
    board = pd.DataFrame(leaderboard_rows(grid))
    tmp = out / "leaderboard.csv.tmp"
    board.to_csv(tmp, index=False)
    os.replace(tmp, out / "leaderboard.csv")
    files.append(out / "leaderboard.csv")
    cfg = dataclasses.asdict(TrainConfig.from_dict(best["result"].config))
    files.append(_atomic_text(out / "best_config.yaml", yaml.safe_dump(
        {"config": cfg, "checkpoint": best["checkpoint"], "mlflow_run_id": best["run_id"],
         "best_val_loss": float(best["result"].metrics["best/val_loss"]),
         "best_epoch": int(best["result"].metrics["best/epoch"])}, sort_keys=False)))
    files.append(_atomic_text(out / "test_metrics.json", json.dumps(
        {role: {"crop": r["scores"]["crop"], "track": r["scores"]["track"]} for role, r in rows.items()},
        indent=2)))
    summary = summary_rows(plan.arch, rows)
    md = [f"# {plan.name}", "", f"Arch `{plan.arch}` on `{plan.dataset}` ({plan.num_samples} trial(s), "
          f"up to {plan.max_epochs} epochs, seed {plan.seed}).", "", summary_table(plan.arch, summary), "",
          "Track level (crops covering the whole clip, logits averaged), best trial: "
          + ", ".join(f"{k} {_fmt(best['scores']['track'].get(k))}" for k in COLUMNS), "",
          DEFINITIONS, "", "Best config:", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).strip(), "```", ""]
    files.append(_atomic_text(out / "summary.md", "\n".join(md)))
    files.append(plots.confusion_png(best["scores"]["confusion"], label_names, out / "confusion_matrix.png",
                                     f"{plan.arch}: test confusion (crop level)"))
    history = _history(best["result"])
    if history:
        files.append(plots.per_class_f1_png(history, label_names, out / "per_class_f1.png",
                                            f"{plan.arch}: validation F1 per genre"))
    return files
