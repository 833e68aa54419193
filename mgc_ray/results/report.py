"""What a search leaves under results/: leaderboard, best config, summary, figures.

Figures (PNG, beside the tables; each one is optional: a figure that cannot be drawn
is skipped with one `mgc_ray:` line, never failing the search at its end):
    confusion_matrix.png      best trial, test split, crop level (the paper's Fig. 8)
    per_class_f1.png          best trial, validation F1 per genre over epochs (Fig. 7)
    learning_curves.png       best trial, train/validation loss and validation macro F1 per epoch
    trial_curves.png          every trial's validation macro F1 per epoch; x = stopped by ASHA
    parallel_coordinate.png   Optuna's view of the searched hyperparameters vs best/val_loss
    param_importances.png     Optuna's hyperparameter importances (>= 2 trials, >= 2 varying params)
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from mgc_ray.config import METRIC, PAPER, SEARCHED, TrainConfig
from mgc_ray.files import atomic_text, atomic_write
from mgc_ray.metrics import TABLE_COLUMNS, definitions, paired_difference, verdict
from mgc_ray.results import markdown, plots

TARGET = METRIC  # what the search ranked trials by; the Optuna plots' value

COLUMNS = TABLE_COLUMNS
PAPER_DATASET = "fma_small"  # the paper's Table 1 is like for like only on this dataset


def reference_note(dataset: str) -> str:
    """What the paper's row means beside ours on `dataset`."""
    if dataset == PAPER_DATASET:
        return "The paper's row is Table 1 of the paper, on the same dataset (fma_small, 8 genres)."
    return (
        f"The paper's row is Table 1 of the paper on fma_small (8 genres of real music): on {dataset} it is a "
        "reference point, not a like-for-like result, so the differences from it say nothing about the paper."
    )


def summary_rows(arch: str, rows: dict) -> list[dict]:
    """Paper Table 1 row, our paper-settings trial and our best trial, same columns; each of ours
    with its 95 % intervals (`ci`) and, in words, whether it differs from the paper's paper_f1
    (`vs_paper`: only when the paper's figure lies outside our interval). The best trial's row
    also carries its paired difference from the paper-settings trial (`vs_paper_trial`)."""
    preset = PAPER[arch]
    ref = preset.table1["paper_f1"]
    out = [{"row": f"paper Table 1 ({preset.label})", **{k: preset.table1.get(k) for k in COLUMNS}}]
    labels = {"paper": "ours, paper settings", "best": "ours, best searched"}
    if "ensemble" in rows:
        labels["ensemble"] = f"ours, ensemble of the top {len(rows['ensemble']['members'])}"
    for role, label in labels.items():
        if role in rows:
            scores = rows[role]["scores"]
            ci = dict(scores.crop_ci)
            row = {"row": label, **{k: scores.crop.get(k) for k in COLUMNS}, "ci": ci}
            row["delta_paper_f1"] = row["paper_f1"] - ref
            if "paper_f1" in ci:
                low, high = ci["paper_f1"][0] - ref, ci["paper_f1"][1] - ref
                row["vs_paper"] = verdict(low, high, f"the paper's {ref:.3f}")
            out.append(row)
    best, paper = rows.get("best"), rows.get("paper")
    if best is not None and paper is not None and best is not paper and _paired(best, paper):
        diff = paired_difference(
            best["scores"].labels, best["scores"].crop_pred, paper["scores"].crop_pred, len(best["payload"].label_names)
        )
        next(r for r in out if r["row"] == labels["best"])["vs_paper_trial"] = diff
    ensemble = rows.get("ensemble")
    if best is not None and ensemble is not None and _paired(ensemble, best):
        diff = paired_difference(
            best["scores"].labels,
            ensemble["scores"].crop_pred,
            best["scores"].crop_pred,
            len(best["payload"].label_names),
        )
        out[-1]["vs_best"] = diff
    return out


def _paired(a: dict, b: dict) -> bool:
    """Both scored on the same tracks, with their predictions kept."""
    sa, sb = a["scores"], b["scores"]
    return sa.crop_pred is not None and sb.crop_pred is not None and sa.track_ids == sb.track_ids


def summary_table(arch: str, summary: list[dict], dataset: str) -> str:
    """The summary rows as a markdown table, titled, then each of ours' 95 % intervals and, in words,
    which differences the intervals support; with what the paper's row means on `dataset`."""
    like = dataset == PAPER_DATASET
    head = ["", *COLUMNS, "Δ paper_f1" if like else "Δ paper_f1 (reference only)"]
    lines = markdown.table(
        head,
        [
            [
                r["row"],
                *(markdown.cell(r.get(k)) for k in COLUMNS),
                "" if r.get("delta_paper_f1") is None else f"{r['delta_paper_f1']:+.3f}",
            ]
            for r in summary
        ],
    )
    ours = [r for r in summary if r.get("ci")]
    if ours:
        lines += ["", "95 % intervals (bootstrap over the test tracks, seeded):", ""]
        lines += markdown.table(
            ["", *COLUMNS], [[r["row"], *(markdown.interval(r["ci"].get(k)) for k in COLUMNS)] for r in ours]
        )
        lines += [""] + [f"- {r['row']}: paper_f1 {r['vs_paper']}." for r in ours if r.get("vs_paper")]
    for r in summary:
        if r.get("vs_paper_trial"):
            d, low, high = r["vs_paper_trial"]["paper_f1"]
            lines.append(
                f"- {r['row']} minus ours at paper settings, paired on the same test tracks: paper_f1 {d:+.3f} "
                f"(95 % interval {low:+.3f} to {high:+.3f}): {verdict(low, high, 'the paper-settings trial')}."
            )
        if r.get("vs_best"):
            d, low, high = r["vs_best"]["paper_f1"]
            lines.append(
                f"- {r['row']} minus the best trial alone, paired on the same test tracks: paper_f1 {d:+.3f} "
                f"(95 % interval {low:+.3f} to {high:+.3f}): {verdict(low, high, 'the best trial alone')}."
            )
    return (
        f"\n{arch} on {dataset}: test split beside the paper's Table 1\n"
        + "\n".join(lines)
        + "\n"
        + reference_note(dataset)
        + "\n"
    )


def overall_summary(
    plan, done: dict[str, dict], best_loss: dict[str, float], best_arch: str, budget_note: str | None = None
) -> str:
    """summary.md of a search over several archs: each arch's best (and paper) trial beside its
    Table 1 row, then the best overall."""
    head = ["arch", "row", "best val loss", *COLUMNS]
    lines = [
        f"# {plan.name}",
        "",
        f"{plan.num_samples} trial(s) over {', '.join(plan.archs)} on `{plan.dataset}` "
        f"(one Optuna study, ASHA across all archs; up to {plan.max_epochs} epochs). Test split, crop level.",
        "",
    ]
    lines += markdown.table(
        head,
        [
            [
                arch,
                r["row"],
                f"{best_loss[arch]:.3f}" if r["row"] == "ours, best searched" else "",
                *(markdown.cell(r.get(k)) for k in COLUMNS),
            ]
            for arch, summary in done.items()
            for r in summary["rows"]
        ],
    )
    best = next(r for r in done[best_arch]["rows"] if r["row"] == "ours, best searched")
    lines += [
        "",
        f"Best overall (lowest validation loss): {best_arch}, val loss {best_loss[best_arch]:.3f}, "
        f"test paper_f1 {markdown.cell(best.get('paper_f1'))}; each arch's own files are in its folder here.",
        "",
    ]
    if budget_note:
        lines += [budget_note, ""]
    lines += [reference_note(plan.dataset), ""]
    return "\n".join(lines)


def _history(result) -> list[dict]:
    df = result.metrics_dataframe
    if df is None or df.empty:
        return []
    return [{k: v for k, v in row.items()} for row in df.to_dict("records")]


def leaderboard_rows(grid) -> list[dict]:
    rows = []
    for r in grid:
        m, cfg = r.metrics or {}, r.config or {}
        rows.append(
            {
                "trial_id": m.get("trial_id", Path(str(r.path)).name),
                "status": "ERROR" if r.error is not None else "OK",
                "epochs": m.get("training_iteration", 0),
                "best_val_loss": m.get(METRIC),
                "best_epoch": m.get("best/epoch"),
                "best_val_paper_f1": m.get("best/val_paper_f1"),
                "best_val_macro_f1": m.get("best/val_macro_f1"),
                **{k: cfg.get(k) for k in SEARCHED},
                "device": m.get("device"),
                "data_mode": m.get("data_mode"),
                **{k.replace("/", "_"): m.get(k) for k in COST},
            }
        )
    return sorted(rows, key=lambda r: (r["best_val_loss"] is None, r["best_val_loss"] or 0.0))


# A trial's cost as it reports it (trainable._cost): cumulative over its epochs.
COST = ("cost/gpu_s", "cost/cpu_s", "cost/wall_s", "cost/samples_seen", "cost/samples_per_s")


def cost_totals(grid) -> dict:
    """A search's cost: the sum over its trials (samples/s: samples over wall seconds)."""
    ms = [r.metrics or {} for r in grid]
    tot = {k: sum(float(m.get(k) or 0) for m in ms) for k in COST[:4]}
    devices = sorted({str(m["device"]) for m in ms if m.get("device")})
    return {
        "devices": devices,
        "data_modes": sorted({str(m["data_mode"]) for m in ms if m.get("data_mode")}),
        "trials": len(ms),
        **tot,
        "cost/samples_per_s": tot["cost/samples_seen"] / max(tot["cost/wall_s"], 1e-9),
    }


def cost_line(totals: dict) -> str:
    return (
        f"Cost of the search's trials ({totals['trials']}, on {', '.join(totals['devices']) or 'unknown'}, "
        f"data {' and '.join(totals.get('data_modes') or ['unknown'])}): "
        f"{totals['cost/gpu_s']:.1f} GPU-s (GPU share x wall), {totals['cost/cpu_s']:.1f} CPU-s, "
        f"{totals['cost/wall_s']:.1f} trial wall-s, {totals['cost/samples_seen']:,.0f} training samples seen, "
        f"{totals['cost/samples_per_s']:.1f} samples/s."
    )


def write_search_results(
    out: Path,
    plan,
    grid,
    rows: dict,
    manifest,
    space_entries: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> list[Path]:
    """Write the leaderboard, best config, summary, test metrics and figures; return the files.

    `space_entries`: the entries the search drew from (`SearchSpace.space`: the Optuna figures' axes);
    None: axes span the values seen. `notes`: sentences for the summary's head (why a budget
    ended the search, rungs that cut at chance).
    """
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    label_names = list(manifest.label_names)
    best = rows["best"]
    files = []
    board = pd.DataFrame(leaderboard_rows(grid))
    files.append(atomic_write(out / "leaderboard.csv", lambda tmp: board.to_csv(tmp, index=False)))
    cfg = dataclasses.asdict(TrainConfig.from_dict(best["result"].config))
    files.append(
        atomic_text(
            out / "best_config.yaml",
            yaml.safe_dump(
                {
                    "config": cfg,
                    "data_seed": manifest.data_seed,
                    "checkpoint": best["checkpoint"],
                    "mlflow_run_id": best["run_id"],
                    "best_val_loss": float(best["result"].metrics[METRIC]),
                    "best_epoch": int(best["result"].metrics["best/epoch"]),
                },
                sort_keys=False,
            ),
        )
    )
    files.append(
        atomic_text(
            out / "test_metrics.json",
            json.dumps(
                {
                    "seed": plan.seed,
                    "data_seed": manifest.data_seed,
                    "cache": plan.cache,
                    "test_track_ids": list(best["scores"].track_ids),
                    **{
                        role: {
                            "crop": dict(r["scores"].crop),
                            "track": dict(r["scores"].track),
                            "crop_ci95": {k: list(v) for k, v in r["scores"].crop_ci.items()},
                            "track_ci95": {k: list(v) for k, v in r["scores"].track_ci.items()},
                            **({"members": r["members"]} if "members" in r else {}),
                        }
                        for role, r in rows.items()
                    },
                },
                indent=2,
            ),
        )
    )
    summary = summary_rows(plan.arch, rows)
    first = (
        "The first trial was at the paper's settings."
        if "paper" in rows
        else "No trial was at the paper's settings (the search space starts elsewhere), so no row is labelled so."
    )
    md = [
        f"# {plan.name}",
        "",
        f"Arch `{plan.arch}` on `{plan.dataset}` ({plan.num_samples} trial(s), "
        f"up to {plan.max_epochs} epochs, seed {plan.seed}, data seed {manifest.data_seed}: "
        f"{manifest.num_tracks.get('test', 0)} test tracks, {manifest.n_classes} genres). {first}",
        "",
        *[line for note in notes for line in (note, "")],
        summary_table(plan.arch, summary, plan.dataset),
        "",
        cost_line(cost_totals(grid)),
        "",
        "Track level (crops covering the whole clip, logits averaged), best trial: "
        + ", ".join(f"{k} {markdown.cell(best['scores'].track.get(k))}" for k in COLUMNS),
        "",
        *_ensemble_lines(rows.get("ensemble")),
        definitions(manifest.n_classes),
        "",
        "Best config:",
        "",
        "```yaml",
        yaml.safe_dump(cfg, sort_keys=False).strip(),
        "```",
        "",
    ]
    files.append(atomic_text(out / "summary.md", "\n".join(md)))
    _figure(
        files,
        "confusion-matrix",
        lambda: plots.confusion_png(
            best["scores"].confusion,
            label_names,
            out / "confusion_matrix.png",
            f"{plan.arch}: test confusion (crop level)",
        ),
    )
    history = _history(best["result"])
    if history:
        _figure(
            files,
            "per-class F1",
            lambda: plots.per_class_f1_png(
                history, label_names, out / "per_class_f1.png", f"{plan.arch}: validation F1 per genre"
            ),
        )
        _figure(
            files,
            "learning curves",
            lambda: plots.learning_curves_png(
                history, out / "learning_curves.png", f"{plan.arch}: best trial {trial_name(best['result'])}"
            ),
        )
    _figure(
        files,
        "trial curves",
        lambda: plots.trial_curves_png(
            trial_curves(grid, best["result"], plan.max_epochs),
            plan.max_epochs,
            out / "trial_curves.png",
            f"{plan.arch}: every trial (ASHA stops the weaker ones early)",
        ),
    )
    _optuna_figures(files, out, plan, grid, space_entries or {})
    return files


def _ensemble_lines(ensemble: dict | None) -> list[str]:
    """What the ensemble row is made of, for summary.md."""
    if ensemble is None:
        return []
    members = ", ".join(f"{m['trial']} (val loss {m['val_loss']:.3f})" for m in ensemble["members"])
    return [
        f"The ensemble is the mean of the probabilities of the {len(ensemble['members'])} trials with the "
        f"lowest validation loss: {members}. It costs one test-split evaluation per member, no training; "
        "`python -m mgc_ray.predict --search NAME` and `python -m mgc_ray.evaluate --search NAME` use it.",
        "",
    ]


def _figure(files: list[Path], what: str, draw: Callable[[], Path]) -> None:
    """Draw one optional figure; a failure is one line, not a failed search."""
    try:
        files.append(draw())
    except Exception as exc:  # noqa: BLE001 - a figure must never lose the search's results
        print(
            f"mgc_ray: {what} figure skipped ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            flush=True,
        )


def trial_name(result) -> str:
    """A Tune result's trial id (its folder's name if it never reported one)."""
    return str((result.metrics or {}).get("trial_id") or Path(str(result.path)).name)


def trial_curves(grid, best_result, max_epochs: int) -> list[dict]:
    """Per trial: validation macro F1 per epoch, and whether ASHA stopped it or it failed."""
    out = []
    for r in grid:
        df = r.metrics_dataframe
        if df is None or df.empty or "val/macro_f1" not in df or "epoch" not in df:
            continue
        df = df.dropna(subset=["val/macro_f1"]).sort_values("epoch")
        epochs = [int(e) + 1 for e in df["epoch"]]
        failed = r.error is not None
        limit = int((r.config or {}).get("max_epochs", max_epochs))
        out.append(
            {
                "name": trial_name(r),
                "epochs": epochs,
                "values": [float(v) for v in df["val/macro_f1"]],
                "failed": failed,
                "stopped": not failed and bool(epochs) and epochs[-1] < limit,
                "best": trial_name(r) == trial_name(best_result),
            }
        )
    return out


def _native(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def study_from_grid(grid, space_entries: Mapping[str, Any]):
    """An in-memory Optuna study of the finished trials: searched params -> best/val_loss.

    Only hyperparameters that vary between trials go in (a constant adds nothing). Each one's
    distribution is the search space's entry's (`space_entries`: `space.Entry` by name, the
    `SearchSpace.space` the search drew from) when every value lies in it; else, for a range,
    one spanning the values seen, and for a choice or a hyperparameter not searched, the values seen.

    Args:
        grid: Tune's results.
        space_entries: {name: space.Entry}; a dict entry (`{type, ...}`) is read by
            `space.entry_from_dict`.

    Returns:
        (study or None, reason it is None or "").
    """
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from mgc_ray.search.space import Entry, entry_from_dict

    done = [
        r
        for r in grid
        if r.error is None
        and r.metrics
        and r.config
        and isinstance(r.metrics.get(TARGET), (int, float))
        and math.isfinite(float(r.metrics[TARGET]))
    ]
    if len(done) < 2:
        return None, f"{len(done)} finished trial(s); a study needs at least 2"
    observed = {k: [_native(r.config.get(k)) for r in done] for k in SEARCHED}
    varying = [k for k, vs in observed.items() if None not in vs and len(set(vs)) > 1]
    if not varying:
        return None, "no hyperparameter varies between the trials"
    entries = {k: e if isinstance(e, Entry) else entry_from_dict(k, e) for k, e in space_entries.items()}
    dists = {}
    for k in varying:
        entry, vs = entries.get(k), observed[k]
        if entry is not None and all(entry.contains(v) for v in vs):
            dists[k] = entry.distribution()
        elif entry is not None and not entry.choices():  # a range the values left: the span seen
            lo, hi = min(map(float, vs)), max(map(float, vs))
            dists[k] = FloatDistribution(lo, hi, log=lo > 0)
        else:
            dists[k] = CategoricalDistribution(sorted(set(vs)))
    study = optuna.create_study(direction="minimize", study_name="search")
    for i, r in enumerate(done):
        study.add_trial(
            optuna.trial.create_trial(
                params={k: observed[k][i] for k in varying}, distributions=dists, value=float(r.metrics[TARGET])
            )
        )
    return study, ""


def _optuna_figures(files: list[Path], out: Path, plan, grid, entries: Mapping[str, Any]) -> None:
    """Parallel coordinates and importances of the search, or one line saying why not."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" lines
    try:
        study, why = study_from_grid(grid, entries)
    except Exception as exc:  # noqa: BLE001
        study, why = None, f"{type(exc).__name__}: {exc}"
    finally:
        optuna.logging.set_verbosity(verbosity)
    if study is None:
        print(f"mgc_ray: Optuna parallel-coordinate and importance figures skipped: {why}", flush=True)
        return
    target = "best val loss"
    _figure(
        files,
        "parallel-coordinate",
        lambda: plots.optuna_parallel_png(
            study, out / "parallel_coordinate.png", f"{plan.arch}: searched hyperparameters vs {target}", target
        ),
    )
    n_params = len(study.trials[0].params)
    if n_params < 2:
        print(
            f"mgc_ray: parameter-importance figure skipped: only {n_params} hyperparameter varies "
            "between the trials (importance compares at least 2)",
            flush=True,
        )
        return
    _figure(
        files,
        "parameter-importance",
        lambda: plots.optuna_importance_png(
            study, out / "param_importances.png", f"{plan.arch}: hyperparameter importance for {target}", target
        ),
    )
