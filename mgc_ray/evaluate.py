"""`python -m mgc_ray.evaluate --run-id ID`: score a trained model on the test (or validation) split.

The model comes from a run's `mgc.checkpoint` tag (the search run, its best trial or
its paper-settings trial) or from --checkpoint DIR; the data from the search run's
`cache` param or --cache DIR. Scores at crop level (one centred crop per track, the
paper's way) and track level (crops covering the whole clip, logits averaged), every
metric of `mgc_ray.metrics`. Writes under --out, and logs to the run when there is one
(artifacts under `evaluate_<split>/`, headline metrics as `evaluate/<split>/...`):

    metrics.json                 both levels, confusion matrices, label names, provenance
    confusion_matrix.png         crop level (the paper's Fig. 8); confusion_matrix_track.png
    per_class.csv, per_class.md  precision / recall / F1 per genre, both levels, with support
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from mgc_ray.errors import Parser, UserError, run_cli
from mgc_ray.files import writable_dir
from mgc_ray.metrics import METRIC_NAMES, interval_metrics
from mgc_ray.results.markdown import interval, table

HEADLINE = ("loss", *METRIC_NAMES)


def build_parser() -> Parser:
    p = Parser(prog="python -m mgc_ray.evaluate", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--search",
        metavar="NAME",
        help="a search's name or its search run's id: its ensemble (the top trials, tune --ensemble) is scored",
    )
    src.add_argument("--run-id", help="an MLflow run carrying mgc.checkpoint (a search run, its best or paper trial)")
    src.add_argument("--checkpoint", help="a checkpoint directory (holding model.pt)")
    p.add_argument("--split", default="test", choices=("test", "val"), help="default: test")
    p.add_argument("--cache", help="the prepared cache to score on (default: the run's search's cache)")
    p.add_argument("--mlflow-uri", default="sqlite:///mlflow.db", help="default: sqlite:///mlflow.db")
    p.add_argument("--out", help="output folder (default: results/evaluations/<run or checkpoint>-<split>)")
    return p


def _default_out(args) -> Path:
    if args.search:
        name = f"search-{args.search}"
    elif args.run_id:
        name = args.run_id
    else:
        name = "ckpt-" + hashlib.sha1(str(Path(args.checkpoint).resolve()).encode()).hexdigest()[:8]
    return Path("results") / "evaluations" / f"{name}-{args.split}"


def check_compatible(manifest, payload, cache: str, checkpoint: str, split: str) -> None:
    """The cache must hold audio at the model's rate, the model's genres, and the split.

    Raises:
        UserError: naming both sides of the mismatch.
    """
    model_rate = payload.model_config.sample_rate
    if manifest.sample_rate != model_rate:
        raise UserError(
            f"cache {cache} holds {manifest.sample_rate} Hz audio but checkpoint {checkpoint} "
            f"takes {model_rate} Hz: give a cache prepared at {model_rate} Hz with --cache "
            f"(python -m mgc_ray.prepare --sample-rate {model_rate} ...)"
        )
    if list(manifest.label_names) != list(payload.label_names):
        raise UserError(
            f"cache {cache} has genres {list(manifest.label_names)}, checkpoint {checkpoint} was trained "
            f"on {list(payload.label_names)}: give the cache the model was trained on with --cache"
        )
    if not manifest.shards.get(split) or not int(manifest.num_tracks.get(split, 1)):
        raise UserError(f"cache {cache} has no {split} tracks: choose another --split or cache")


def _scores(members: list, manifest, split: str) -> list:
    """`scoring.score_split` of each (model, payload) on the split's shards, under one small local Ray."""
    import ray

    from mgc_ray import cluster
    from mgc_ray.data.cache import verify_shards
    from mgc_ray.trial.scoring import score_split

    verify_shards(manifest, [split])  # a damaged shard is one line, never scores from altered audio
    started = not ray.is_initialized()
    if started:
        cluster.init(None, log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    try:
        ray.data.DataContext.get_current().print_on_execution_start = False  # Ray Data's bars stay: progress
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no "execution finished" lines
        ds = ray.data.read_parquet(manifest.shard_paths(split)).select_columns(["track_id", "label", "samples"])
        return [
            score_split(model, ds, list(payload.label_names), crop_len=payload.model_config.crop_samples)
            for model, payload in members
        ]
    finally:
        if started:
            ray.shutdown()


def _levels(scores) -> dict:
    return {"crop": scores.crop, "track": scores.track}


def per_class_rows(scores, label_names: Sequence[str]) -> list[dict]:
    """One row per genre: support and precision/recall/F1 at crop and track level."""
    support = np.asarray(scores.confusion).sum(1)
    levels = _levels(scores)
    rows = []
    for i, g in enumerate(label_names):
        row = {"genre": g, "support": int(support[i])}
        for level in ("crop", "track"):
            for m in ("precision", "recall", "f1"):
                row[f"{level}_{m}"] = float(levels[level][f"{m}/{g}"])
        rows.append(row)
    return rows


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return "\n".join(table(head, rows))


def metrics_table(scores) -> str:
    """Each headline figure at crop and track level, then its 95 % interval (bootstrap over the tracks)."""
    levels = _levels(scores)
    cis = {"crop": scores.crop_ci, "track": scores.track_ci}
    rows = [[lvl, *(f"{levels[lvl][k]:.4f}" for k in HEADLINE)] for lvl in ("crop", "track")]
    rows += [[f"{lvl} 95 % interval", *(interval(cis[lvl].get(k)) for k in HEADLINE)] for lvl in ("crop", "track")]
    return _table(["level", *HEADLINE], rows)


def per_class_table(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k not in ("genre", "support")]
    return _table(
        ["genre", "support", *keys], [[r["genre"], str(r["support"]), *(f"{r[k]:.3f}" for k in keys)] for r in rows]
    )


def write_outputs(out: Path, scores, label_names: list[str], info: dict) -> list[Path]:
    """Write metrics.json, the confusion PNGs and the per-class tables; return the files."""
    from mgc_ray.files import atomic_text
    from mgc_ray.results import plots

    rows = per_class_rows(scores, label_names)
    files = [
        atomic_text(
            out / "metrics.json",
            json.dumps(
                {
                    **info,
                    "label_names": label_names,
                    "crop": dict(scores.crop),
                    "track": dict(scores.track),
                    "crop_ci95": {k: list(v) for k, v in scores.crop_ci.items()},
                    "track_ci95": {k: list(v) for k, v in scores.track_ci.items()},
                    "confusion": np.asarray(scores.confusion).tolist(),
                    "track_confusion": np.asarray(scores.track_confusion).tolist(),
                    "track_ids": list(scores.track_ids),
                },
                indent=2,
            ),
        )
    ]
    what = f"{info['arch']} on {info['split']}"
    files.append(
        plots.confusion_png(
            scores.confusion, label_names, out / "confusion_matrix.png", f"{what}: confusion (crop level)"
        )
    )
    files.append(
        plots.confusion_png(
            scores.track_confusion, label_names, out / "confusion_matrix_track.png", f"{what}: confusion (track level)"
        )
    )
    csv = (
        ",".join(rows[0])
        + "\n"
        + "".join(",".join(str(v) if not isinstance(v, float) else f"{v:.6f}" for v in r.values()) + "\n" for r in rows)
    )
    files.append(atomic_text(out / "per_class.csv", csv))
    md = [
        f"# {what}",
        "",
        *(
            [f"- checkpoint `{info['checkpoint']}` (epoch {info.get('epoch')})"]
            if len(info["checkpoints"]) == 1
            else [f"- an ensemble (mean probabilities) of {len(info['checkpoints'])} checkpoints:"]
            + [f"  - `{c}`" for c in info["checkpoints"]]
        ),
        *([f"- MLflow run `{info['run_id']}`"] if info.get("run_id") else []),
        f"- cache `{info['cache']}`, {info['tracks']} tracks",
        "",
        "Crop level: one centred crop per track (the paper's way); track level: crops covering "
        "the whole clip, logits averaged.",
        "",
        metrics_table(scores),
        "",
        per_class_table(rows),
        "",
    ]
    files.append(atomic_text(out / "per_class.md", "\n".join(md)))
    return files


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mgc_ray.data.cache import check_cache
    from mgc_ray.models import checkpoint as ckpt

    run = None
    if args.search:
        from mgc_ray.search.tracking import resolve_search

        run = resolve_search(args.mlflow_uri, args.search)
        paths = list(run.checkpoints)
    elif args.run_id:
        from mgc_ray.search.tracking import resolve_run

        run = resolve_run(args.mlflow_uri, args.run_id)
        paths = [run.checkpoint]
    else:
        paths = [args.checkpoint]
    members = [ckpt.load_model(path, expect_arch=run.arch if run else None) for path in paths]
    ckpt.check_members([payload for _, payload in members], paths)
    payload = members[0][1]
    cache = args.cache or (run.cache if run else None)
    if not cache:
        raise UserError(
            "no cache to score on: give --cache DIR (a prepared cache, python -m mgc_ray.prepare)"
            + (f"; run {run.run_id}'s search records none" if run else "")
        )
    manifest = check_cache(cache)
    for (_, member), path in zip(members, paths):
        check_compatible(manifest, member, cache, path, args.split)
    out = writable_dir(Path(args.out) if args.out else _default_out(args), "--out")
    label_names = list(payload.label_names)
    arch = payload.model_config.arch
    what = f"the ensemble of {len(paths)} models of search {run.name}" if len(paths) > 1 else paths[0]
    print(f"mgc_ray: scoring {arch} ({what}) on the {args.split} split of {cache}", flush=True)
    scored = _scores(members, manifest, args.split)
    if len(scored) > 1:
        from mgc_ray.trial.scoring import ensemble_scores

        scores = ensemble_scores(scored, label_names)
    else:
        scores = scored[0]
    info = {
        "arch": arch,
        "split": args.split,
        "checkpoint": str(paths[0]),
        "checkpoints": [str(p) for p in paths],
        "run_id": run.run_id if run else None,
        "cache": str(cache),
        "tracks": int(np.asarray(scores.track_confusion).sum()),
        "epoch": payload.epoch,
        "mgc_ray_version": payload.version,
    }
    files = write_outputs(out, scores, label_names, info)
    print(
        f"\n{arch} on the {args.split} split ({info['tracks']} tracks)\n{metrics_table(scores)}\n\n"
        f"{per_class_table(per_class_rows(scores, label_names))}\n",
        flush=True,
    )
    if run is not None:
        # an ensemble's figures sit beside, never over, the search run's best-trial evaluation
        key = "evaluate_ensemble" if len(paths) > 1 else "evaluate"
        metrics = {
            f"{key}/{args.split}{'' if lvl == 'crop' else '_track'}/{k}": v[k]
            for lvl, v in _levels(scores).items()
            for k in HEADLINE
        }
        metrics.update(interval_metrics(f"{key}/{args.split}", scores.crop_ci))
        metrics.update(interval_metrics(f"{key}/{args.split}_track", scores.track_ci))
        from mgc_ray.search import tracking

        c = tracking.open_store(args.mlflow_uri)
        tracking.log_metrics(c, run.run_id, metrics)
        tracking.log_artifacts(c, run.run_id, files, f"{key}_{args.split}")
        print(f"mgc_ray: logged {len(files)} files to MLflow run {run.run_id} (artifacts {key}_{args.split}/)")
    print(f"mgc_ray: wrote {', '.join(f.name for f in files)} to {out}", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
