"""Search quality at equal trial budgets: stock OptunaSearch, ours (pruned feedback), random, warm-started ours.

    python -m benchmarks.search_quality                 # 20 seeds x 4 searchers x 32 trials (CPU, minutes)
    python -m benchmarks.search_quality --smoke         # 2 seeds x 8 trials: checks the script

Every search runs through the real machinery a search uses: Ray Tune, ASHA
(`rungs.SampleASHA`, the search's scheduler, here with a grace of 1 epoch, reduction 2) and the searcher under test,
on a seeded surrogate objective instead of a model, so one search takes seconds.

The surrogate (analytic, seeded per problem). A config is (lr, weight decay,
batch size), searched as in search_spaces/densenet.yaml. Its final validation loss is a
bowl in log10(lr) around an optimum that moves with the batch size (larger
batches like larger lr) and with the problem seed, plus a smaller bowl in
log10(weight decay). Its learning curve starts at chance (ln 10 = 2.30) and
approaches the final loss at a speed per epoch proportional to lr and to
updates per epoch (1 / batch size), with seeded noise (sd 0.03) on every epoch:

    loss(e) = final + (2.30 - final) * exp(-e * speed),  speed = 0.6 * (lr / 3e-4) * (32 / batch)

so a high lr (or a small batch) looks best at epoch 1 and a lower lr overtakes it
later, as in this project's demo trials: the early-epoch ranking of configs is
imperfect, which is what ASHA and a searcher fed by ASHA must live with. A trial
reports the lowest loss so far each epoch (the project's metric, best/val_loss).

Searchers, at the same seeds and budgets, the paper's settings first for each:
- stock: Ray's `OptunaSearch` (TPE, seeded), told an ASHA-stopped trial is COMPLETE;
- ours: `searcher.StudySearcher` (the same TPE), told PRUNED with intermediate values;
- random: Tune's random search (`BasicVariantGenerator`);
- warm: ours, warm-started with the finished trials of an earlier search of half the budget of
  ours (another seed) on the same problem (it has seen more trials: shown apart).

Quality of a search with a budget of B trials: the lowest final (epoch max_t) value
among its first B trials that ran the full length; trials run one at a time, so the
first B trials of a 32-trial search are exactly a B-trial search (ASHA and the
searcher decide on earlier trials only). Reported: the median over seeds against B,
and the smallest B at which each searcher's median reaches stock's median at the
full budget.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _common as C
from mgc_ray.search.space import Choice, LogUniform

CHANCE = math.log(10)
MAX_T = 16
LR = LogUniform(1.0e-5, 1.0e-3)  # as in search_spaces/densenet.yaml
WD = LogUniform(1.0e-6, 1.0e-2)
BATCH = Choice((16, 32, 64))
METHODS = ("stock", "ours", "random", "warm")
TARGET_SHARE = 0.70  # the target: stock's final best with at most 70 % of its trials


def problem(seed: int) -> dict:
    """A surrogate problem: where its optimum lies (seeded)."""
    r = random.Random(seed)
    return {"lr_shift": r.uniform(-0.4, 0.4), "wd_opt": r.uniform(-5.5, -3.0), "floor": r.uniform(0.8, 1.1)}


def final_loss(p: dict, lr: float, wd: float, batch: int) -> float:
    x_opt = -3.8 + 0.3 * math.log2(batch / 32) + p["lr_shift"]
    return (
        p["floor"]
        + 0.45 * (math.log10(lr) - x_opt) ** 2
        + 0.04 * (math.log10(wd) - p["wd_opt"]) ** 2
        + 0.03 * abs(math.log2(batch / 32))
    )


def curve(p: dict, seed: int, lr: float, wd: float, batch: int, epochs: int) -> list[float]:
    """Per-epoch validation loss (noisy), epochs 1..epochs."""
    final = min(final_loss(p, lr, wd, batch), CHANCE)
    speed = 0.6 * (lr / 3e-4) * (32 / batch)
    r = random.Random(hash((seed, round(math.log10(lr), 9), round(math.log10(wd), 9), batch)) & 0xFFFFFFFF)
    return [final + (CHANCE - final) * math.exp(-e * speed) + r.gauss(0, 0.03) for e in range(1, epochs + 1)]


def surrogate_trial(config: dict) -> None:
    from ray import tune

    p = problem(config["problem"])
    from mgc_ray.search.rungs import TIME_ATTR

    best = math.inf
    for epoch, v in enumerate(
        curve(p, config["problem"], config["lr"], config["weight_decay"], config["batch_size"], config["max_epochs"])
    ):
        best = min(best, v)
        # samples seen: an epoch of the same training split for every batch size (one unit here)
        tune.report({"best/val_loss": best, "val/loss": v, TIME_ATTR: epoch + 1})


def _space():
    from mgc_ray.search.space import SearchSpace

    start = {"lr": 1e-4, "weight_decay": 1e-4, "batch_size": 32, "window": 1976, "n_mels": 224, "crop_seconds": 10.0}
    return SearchSpace("densenet", start, {"lr": LR, "weight_decay": WD, "batch_size": BATCH}, "surrogate")


def run_search(
    method: str, prob: int, seed: int, budget: int, work: Path, warm_from: str | None = None, label: str | None = None
) -> list[dict]:
    """One search; returns its trials in start order: {config, epochs, final (None if stopped), values}."""
    import optuna
    from ray import tune
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    from mgc_ray.config import METRIC, MODE
    from mgc_ray.search.rungs import REDUCTION_FACTOR, SampleASHA
    from mgc_ray.search.searcher import StudySearcher

    space = _space()
    fixed = {"problem": prob, "max_epochs": MAX_T}
    paper = {"lr": 1e-4, "weight_decay": 1e-4, "batch_size": 32}
    dists = {
        "lr": tune.loguniform(LR.low, LR.high),
        "weight_decay": tune.loguniform(WD.low, WD.high),
        "batch_size": tune.choice(list(BATCH.values)),
    }
    storage = f"sqlite:///{work / 'optuna.db'}"
    name = f"{label or method}-p{prob}-s{seed}-b{budget}"
    if method == "stock":
        alg, param_space = (
            OptunaSearch(points_to_evaluate=[paper], sampler=optuna.samplers.TPESampler(seed=seed)),
            {**fixed, **dists},
        )
    elif method == "random":
        alg, param_space = BasicVariantGenerator(points_to_evaluate=[paper], random_state=seed), {**fixed, **dists}
    else:
        alg = StudySearcher(
            storage, name, [space], seed, MAX_T, metric=METRIC, mode=MODE, warm_start=[warm_from] if warm_from else ()
        )
        param_space = fixed
    tuner = tune.Tuner(
        surrogate_trial,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            num_samples=budget,
            search_alg=alg,
            max_concurrent_trials=1,
            scheduler=SampleASHA(
                max_epochs=MAX_T, grace=1, per_epoch=1, chance=CHANCE, reduction_factor=REDUCTION_FACTOR
            ),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(work / "ray"), verbose=0),
    )
    grid = tuner.fit()
    rows, prob_ = [], problem(prob)
    for r in grid:  # the values a trial reported, recomputed (the surrogate is deterministic)
        epochs = int(r.metrics.get("training_iteration", 0))
        values = curve(prob_, prob, r.config["lr"], r.config["weight_decay"], r.config["batch_size"], epochs)
        rows.append(
            {
                "trial_id": r.metrics.get("trial_id"),
                "index": _creation_index(r),
                "config": {k: r.config[k] for k in paper},
                "epochs": len(values),
                "final": min(values) if len(values) == MAX_T else None,
            }
        )
    # The creation index is the start order with one trial at a time (Tune's trial ids are random).
    rows.sort(key=lambda row: row["index"])
    return rows


def _creation_index(result) -> int:
    """Tune's experiment tag starts with the trial's creation index ("3_batch_size=..."); so does
    the part of its folder name after the trial id."""
    tag = str((result.metrics or {}).get("experiment_tag") or Path(str(result.path)).name.split("_", 3)[3])
    return int(tag.split("_")[0])


def best_by_budget(rows: list[dict], budget: int) -> list[float]:
    out, best = [], math.inf
    for row in rows[:budget]:
        if row["final"] is not None:
            best = min(best, row["final"])
        out.append(best)
    return out


def main(argv=None) -> int:
    p = C.parser("python -m benchmarks.search_quality", __doc__, device=False, ray=False)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--budget", type=int, default=32)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--time-limit", type=float, default=3000, help="seconds: stop starting searches after this")
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="combine the reports of runs over other seeds (same budget) into one report in --out",
    )
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, C.out_dir(args))
    seeds, budget = (2, 8) if args.smoke else (args.seeds, args.budget)
    out = C.out_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    curves: dict[str, list[list[float]]] = {m: [] for m in METHODS}
    searches: dict[str, list[float]] = {m: [] for m in METHODS}
    import torch

    report = {
        "machine": C.machine(torch.device("cpu")),
        "max_t": MAX_T,
        "budget": budget,
        "seeds": [],
        "surrogate": "analytic (see the script's doc)",
    }
    with C.work_dir(args.work) as work, C.ray_session(num_cpus=2):
        for s in range(args.first_seed, args.first_seed + seeds):
            if time.time() - t0 > args.time_limit:
                print(f"time limit reached after {s} seeds", flush=True)
                break
            d = Path(tempfile.mkdtemp(dir=work))
            earlier = max(4, budget // 2)  # the warm start's source: an earlier search of ours, another seed
            run_search("ours", s, 1000 + s, earlier, d, label="earlier")
            for m in METHODS:
                t = time.time()
                rows = run_search(
                    "ours" if m == "warm" else m,
                    s,
                    s,
                    budget,
                    d,
                    label=m,
                    warm_from=f"earlier-p{s}-s{1000 + s}-b{earlier}" if m == "warm" else None,
                )
                curves[m].append(best_by_budget(rows, budget))
                searches[m].append(time.time() - t)
                print(
                    f"seed {s} {m}: best final {curves[m][-1][-1]:.4f} "
                    f"({sum(r['final'] is not None for r in rows)} of {len(rows)} full-length) "
                    f"in {time.time() - t:.1f} s; load {C.load1()}",
                    flush=True,
                )
            report["seeds"].append(s)
            write(out, report, curves, searches, budget, t0)  # after every seed: a cut-short run keeps its figures
    return 0 if report["seeds"] else 1


def optimum(p: dict) -> float:
    """The problem's lowest noise-free final loss over the space: `final_loss`'s floor, at batch 32
    (the lr and wd bowls' centres lie inside LR and WD for every seeded problem)."""
    return p["floor"]


def paired(report: dict, rng_seed: int = 0) -> list[dict]:
    """Each searcher against stock on the same seeds (the same problems): the per-seed difference of
    the best final value at the whole budget, its mean with a seeded bootstrap 95 % interval, the
    win/tie/loss count and a Wilcoxon signed-rank p; and each searcher's regret from the optimum.
    Raw values are not compared across seeds: the problems' optima differ by more than the gaps."""
    import numpy as np
    from scipy.stats import wilcoxon

    best = {m: np.asarray(v) for m, v in report["per_seed_best"].items()}
    opt = np.asarray([optimum(problem(s)) for s in report["seeds"]])
    rng = np.random.default_rng(rng_seed)
    rows = []
    for m in METHODS:
        d = best[m] - best["stock"]
        boot = rng.choice(d, size=(10_000, len(d))).mean(axis=1)
        nonzero = d[d != 0]
        rows.append(
            dict(
                searcher=m,
                median_regret=float(np.median(best[m] - opt)),
                mean_diff=float(d.mean()),
                ci95=[float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
                better=int((d < 0).sum()),
                tied=int((d == 0).sum()),
                worse=int((d > 0).sum()),
                wilcoxon_p=float(wilcoxon(nonzero).pvalue) if len(nonzero) >= 6 else None,
            )
        )
    return rows


def merge(paths: list[Path], out: Path) -> int:
    """One report from several runs over disjoint seeds (run side by side to use the machine's time);
    given one report that was merged already, it is written again as it is (its figures re-rendered)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    if len(parts) == 1 and parts[0].get("merged_from"):
        r = parts[0]
        searches = {m: [v] if (v := r["seconds_per_search"][m]) else [] for m in METHODS}
        how = f"{len(r['merged_from'])} runs side by side"
        write(out, r, r["curves"], searches, r["budget"], time.time() - r["wall_s"], how)
        return 0
    budget = parts[0]["budget"]
    if any(r["budget"] != budget for r in parts):
        raise SystemExit("the reports to merge have different budgets")
    report = dict(parts[0])
    report["seeds"] = [s for r in parts for s in r["seeds"]]
    report["merged_from"] = [str(p) for p in paths]
    report["machine"] = dict(
        parts[0]["machine"], load_avg_1min_at_start=max(r["machine"]["load_avg_1min_at_start"] or 0 for r in parts)
    )
    curves = {m: [c for r in parts for c in r["curves"][m]] for m in METHODS}
    wall = max(r["wall_s"] for r in parts)
    searches = {m: [r["seconds_per_search"][m] for r in parts if r["seconds_per_search"][m]] for m in METHODS}
    write(out, report, curves, searches, budget, time.time() - wall, f"{len(parts)} runs side by side")
    return 0


def write(out: Path, report: dict, curves: dict, searches: dict, budget: int, t0: float, how: str = "") -> None:
    n = len(report["seeds"])
    medians = {m: [statistics.median(c[b] for c in curves[m]) for b in range(budget)] for m in METHODS}
    target = medians["stock"][-1]
    needed = {m: next((b + 1 for b in range(budget) if medians[m][b] <= target), None) for m in METHODS}
    report.update(
        curves=curves,
        medians=medians,
        stock_final_best=target,
        budget_to_reach_stock=needed,
        per_seed_best={m: [c[-1] for c in curves[m]] for m in METHODS},
        seconds_per_search={m: statistics.median(v) if v else None for m, v in searches.items()},
        wall_s=time.time() - t0,
    )
    share = needed["ours"] / budget if needed["ours"] else None
    met = share is not None and share <= TARGET_SHARE
    report["target"] = C.target(
        "search quality",
        f"ours reaches stock's final best with <= {TARGET_SHARE:.0%} of its {budget} trials",
        f"{needed['ours']} trials" if needed["ours"] else "never",
        C.MET if met else C.NOT_MET,
        f"{n} seeds, budget {budget}",
    )
    report["name"], report["targets"] = "search_quality", [report["target"]]  # benchmarks/summary.py reads these
    marks = sorted({1, 2, 4, 8, 12, 16, 24, budget} & set(range(1, budget + 1)))
    lines = [
        f"# Search quality at equal trial budgets ({n} seeds, max_t {MAX_T} epochs, ASHA grace 1, rf 2)",
        "",
        "Median over seeds of the best full-length final value (lower is better) among the first B trials:",
        "",
    ]
    lines += C.md_table(
        ["searcher"] + [f"B={b}" for b in marks] + ["B to reach stock's final best"],
        [[m] + [C.fmt(medians[m][b - 1], 4) for b in marks] + [needed[m] or f"> {budget}"] for m in METHODS],
    )
    wins = sum(o < st for o, st in zip(report["per_seed_best"]["ours"], report["per_seed_best"]["stock"]))
    lines += [
        "",
        f"Stock's median final best at B={budget}: {target:.4f}. Ours needs "
        f"{needed['ours'] or f'more than {budget}'} trials ({'met' if met else 'not met'}: the target is "
        f"<= {TARGET_SHARE:.0%} of {budget}); at B={budget} ours is better than stock on {wins} of {n} seeds. "
        "warm has also seen an earlier search of half the budget on the same problem.",
        "",
        "Median seconds per search: "
        + ", ".join(f"{m} {C.fmt(v)}" for m, v in report["seconds_per_search"].items() if v),
        "",
        "The surrogate and the method: see the doc of benchmarks/search_quality.py."
        + (f" Seeds ran as {how}, each with its own local Ray, on a machine shared with other jobs." if how else ""),
    ]
    report["paired"] = paired(report)
    lines += [
        "",
        f"## Paired per seed, at B={budget} (the same {n} problems for every searcher)",
        "",
        "Difference = searcher's best final value minus stock's on the same seed (negative: better than "
        "stock); interval: seeded bootstrap over seeds; p: Wilcoxon signed-rank on the non-zero "
        "differences; regret: best final value minus the problem's optimum (noise-free).",
        "",
    ]
    lines += C.md_table(
        ["searcher", "median regret", "mean difference", "95 % interval", "better / tied / worse", "Wilcoxon p"],
        [
            [r["searcher"], C.fmt(r["median_regret"], 4), "(reference)", "", "", ""]
            if r["searcher"] == "stock"
            else [
                r["searcher"],
                C.fmt(r["median_regret"], 4),
                C.fmt(r["mean_diff"], 4),
                f"[{C.fmt(r['ci95'][0], 4)}, {C.fmt(r['ci95'][1], 4)}]",
                f"{r['better']} / {r['tied']} / {r['worse']}",
                "–" if r["wilcoxon_p"] is None else C.fmt(r["wilcoxon_p"], 2),
            ]
            for r in report["paired"]
        ],
    )
    C.write_report(out, "search_quality", report, lines)


if __name__ == "__main__":
    sys.exit(main())
