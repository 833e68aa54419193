"""A search over several archs (`--arch a,b` or `--arch all`): one study, one Tuner, ASHA across all.

The study (`mgc_ray.study`) draws `arch` first and then only that arch's own
hyperparameters (conditional space); each arch's paper settings are among the
first trials. MLflow: each arch keeps its experiment `mgc_ray/<arch>/<dataset>`,
where a search run of this search's name holds that arch's trials, so `compare`
shows each arch's best trial beside its Table 1 row; every one of those search
runs is tagged with the best arch overall (`mgc.best_overall`). results/<dataset>/<search>/
holds one folder per arch (what a one-arch search writes) and summary.md: the
best trial of each arch and the best overall, each beside its Table 1 row.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from mgc_ray import report, runner, search, study, tracking
from mgc_ray.cache import Manifest
from mgc_ray.callbacks import ArchLoggers, Progress, TrialLogger
from mgc_ray.cluster import TrialResources
from mgc_ray.config import experiment_path
from mgc_ray.errors import UserError
from mgc_ray.files import atomic_text
from mgc_ray.tracking import Tag


def run_multi_search(plan, spaces: list, manifest: Manifest, resources: TrialResources) -> dict:
    """Search over `plan.archs`, then finish each arch as a one-arch search would. Returns
    {"archs": {arch: runner.finish's summary}, "best_arch": arch, "results_dir": path}."""

    from ray import tune

    from mgc_ray.data import CacheDatasets
    from mgc_ray.trainable import train_trial

    cpus, gpus, concurrent = resources.cpus, resources.gpus, resources.max_concurrent
    datasets = CacheDatasets.build(manifest)
    trainable = tune.with_resources(tune.with_parameters(train_trial, datasets=datasets, manifest=manifest),
                                    {"cpu": cpus, "gpu": gpus})
    param_space = {"max_epochs": plan.max_epochs, "seed": plan.seed}  # the study draws arch and the rest
    uri = plan.mlflow_uri
    c = tracking.client(uri)
    runs: dict[str, tuple[str, str]] = {}
    for s in spaces:
        exp_id = tracking.experiment_id(c, tracking.experiment_name(s.arch, plan.dataset), uri)
        tracking.ensure_paper_run(c, exp_id, s.arch)
        runs[s.arch] = (exp_id, tracking.ensure_search_run(c, exp_id, plan.name, {
            "arch": s.arch, "archs": ",".join(plan.archs), "dataset": plan.dataset, "cache": plan.cache,
            "num_samples": plan.num_samples, "max_epochs": plan.max_epochs, "seed": plan.seed,
            "data_seed": manifest.data_seed, "paper_only": False, "first_trial_is_paper": s.starts_at_paper,
            "optuna_storage": plan.optuna_storage, "cpus_per_trial": cpus, "gpus_per_trial": gpus,
            "max_concurrent": concurrent, "split_scheme": manifest.split_scheme,
            "sample_rate": manifest.sample_rate, "n_classes": manifest.n_classes}))
    loggers = {a: TrialLogger(uri, e, p) for a, (e, p) in runs.items()}
    router, progress = ArchLoggers(loggers), Progress()
    status = {a: "FAILED" for a in runs}
    stale: list = []
    try:
        if plan.resume:
            stale = [x for e, p in runs.values() for x in tracking.close_children(c, e, p, "KILLED")]
        print(f"mgc_ray: MLflow {uri}: experiments "
              + ", ".join(repr(tracking.experiment_name(a, plan.dataset)) for a in runs)
              + f", one search run {plan.name!r} each (mlflow ui --backend-store-uri {uri})", flush=True)
        print(f"mgc_ray: {plan.num_samples} trial(s) over {', '.join(plan.archs)}, up to {plan.max_epochs} epochs, "
              f"{concurrent} at once, {cpus:g} CPU + {gpus:g} GPU each; Tune state in "
              f"{experiment_path(plan.storage_path, plan.name)}", flush=True)
        print(f"mgc_ray: Optuna study {plan.name!r} in {plan.optuna_storage} "
              f"({study.dashboard_command(plan.optuna_storage)})", flush=True)
        runner.quiet_tune_logs()
        tuner = runner._tuner(plan, spaces, manifest, trainable, param_space, concurrent, [router, progress])
        grid = tuner.fit()
        chance = runner._chance_note(tuner)  # one scheduler across the archs: its note goes to each
        if progress.interrupted(plan.num_samples):
            raise KeyboardInterrupt
        runner._report_errors(grid)
        results = list(grid)
        root = Path(plan.results_root) / plan.dataset / plan.name
        done: dict[str, dict] = {}
        best_loss: dict[str, float] = {}
        for s in spaces:
            mine = [r for r in results if (r.config or {}).get("arch") == s.arch]
            ok = [r for r in mine if r.error is None and r.metrics and search.METRIC in r.metrics]
            exp_id, parent = runs[s.arch]
            if not ok:
                print(f"mgc_ray: {s.arch}: {'no trial finished' if mine else 'no trial drew it'}; "
                      "no row for it", file=sys.stderr, flush=True)
                status[s.arch] = "FINISHED" if not mine else "FAILED"
                continue
            arch_plan = dataclasses.replace(plan, arch=s.arch, archs=(), num_samples=len(mine))
            done[s.arch] = runner.finish(arch_plan, s, mine, datasets, manifest, c, exp_id, parent, out=root / s.arch,
                                         chance_note=chance)
            best_loss[s.arch] = min(r.metrics[search.METRIC] for r in ok)
            status[s.arch] = "FINISHED"
        if not done:
            raise UserError(f"every trial failed; see {experiment_path(plan.storage_path, plan.name)}")
        best_arch = min(best_loss, key=best_loss.get)
        for _, parent in runs.values():
            c.set_tag(parent, Tag.BEST_OVERALL, best_arch)
        text = overall_summary(plan, done, best_loss, best_arch)
        atomic_text(root / "summary.md", text)
        print(text, flush=True)
        print(f"mgc_ray: results in {root}", flush=True)
        return {"archs": done, "best_arch": best_arch, "results_dir": str(root)}
    except KeyboardInterrupt:
        status = {a: "KILLED" for a in runs}
        print(f"mgc_ray: search {plan.name} interrupted; finish it with the same command and "
              f"--resume --experiment-name {plan.name} --storage-path {plan.storage_path}", file=sys.stderr,
              flush=True)
        raise
    finally:
        for a, (e, p) in runs.items():
            tracking.close_children(c, e, p, "KILLED")
            c.set_terminated(p, status[a])
        tracking.mark_lost(c, [rid for tid, rid in stale if tid not in router.seen])


def overall_summary(plan, done: dict[str, dict], best_loss: dict[str, float], best_arch: str) -> str:
    """summary.md of a search over several archs: each arch's best (and paper) trial beside its
    Table 1 row, then the best overall."""
    cols = report.COLUMNS
    head = ["arch", "row", "best val loss", *cols]
    lines = [f"# {plan.name}", "", f"{plan.num_samples} trial(s) over {', '.join(plan.archs)} on `{plan.dataset}` "
             f"(one Optuna study, ASHA across all archs; up to {plan.max_epochs} epochs). Test split, crop level.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arch, summary in done.items():
        for r in summary["rows"]:
            loss = f"{best_loss[arch]:.3f}" if r["row"] == "ours, best searched" else ""
            lines.append("| " + " | ".join([arch, r["row"], loss, *(report._fmt(r.get(k)) for k in cols)]) + " |")
    best = next(r for r in done[best_arch]["rows"] if r["row"] == "ours, best searched")
    lines += ["", f"Best overall (lowest validation loss): {best_arch}, val loss {best_loss[best_arch]:.3f}, "
              f"test paper_f1 {report._fmt(best.get('paper_f1'))}; each arch's own files are in its folder here.",
              "", report.reference_note(plan.dataset), ""]
    return "\n".join(lines)
