"""`python -m mgc_ray.predict FILE [FILE ...] --search NAME`: the genre of any audio file.

Each file (anything soundfile or librosa reads: mp3, wav, flac, ogg; any length, rate
and channel count) is decoded to mono at the checkpoint's sample rate, cut into windows
of the model's crop length covering the whole file (`pipeline.cover_crops`; a file
shorter than one window is zero-padded), and the windows' softmax probabilities are
averaged. With --search, the search's ensemble answers: each member's probabilities,
averaged (members may differ in crop length). No Ray. A file that cannot be read gets
one `error:` line on stderr, the others are still answered, and the exit status is 2.

    python -m mgc_ray.predict song.mp3 --search densenet-fma_small-20261203-1412 --top 3
    python -m mgc_ray.predict song.mp3 --run-id 3f2a...
    python -m mgc_ray.predict *.mp3 --checkpoint DIR --json > genres.json
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import numpy as np
import torch

from mgc_ray.errors import Parser, UserError, run_cli

BATCH = 16  # windows per forward pass: bounds memory for long files (16 x 10 s x 22,050 x 4 B = 14 MB)


def build_parser() -> Parser:
    p = Parser(prog="python -m mgc_ray.predict", description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (mp3, wav, flac, ...)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--search",
        metavar="NAME",
        help="a search's name or its search run's id: its ensemble (the top trials, tune --ensemble) answers",
    )
    src.add_argument("--run-id", help="an MLflow run carrying mgc.checkpoint (a search run, its best or paper trial)")
    src.add_argument("--checkpoint", help="a checkpoint directory (holding model.pt)")
    p.add_argument("--top", type=int, default=3, metavar="K", help="genres shown per file (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--mlflow-uri", default="sqlite:///mlflow.db", help="default: sqlite:///mlflow.db")
    return p


@torch.no_grad()
def probabilities(model: torch.nn.Module, wave: np.ndarray, crop_len: int) -> tuple[np.ndarray, int]:
    """Average softmax over windows covering the whole waveform.

    Args:
        model: a registry model in eval mode (takes (B, crop_len) waveforms at its sample rate).
        wave: (N,) float32 mono waveform at the model's sample rate.
        crop_len: the model's crop length in samples.
    Returns:
        (probabilities (n_classes,), number of windows).
    """
    from mgc_ray.data.pipeline import cover_crops

    crops = torch.from_numpy(cover_crops(np.ascontiguousarray(wave, dtype=np.float32), crop_len))  # (n, crop_len)
    probs = [torch.softmax(model(crops[i : i + BATCH]).float(), dim=1) for i in range(0, len(crops), BATCH)]
    return torch.cat(probs).mean(0).numpy(), len(crops)  # (n_classes,)


def predict_file(members: list, path: str, sample_rate: int, label_names: list[str]) -> dict:
    """One file's answer from `members` ((model, crop length) pairs: one model, or an ensemble whose
    probabilities are averaged); raises ValueError with a one-line reason when it cannot be read."""
    from mgc_ray.data.audio import decode_audio

    if not os.path.exists(path):
        raise ValueError("no such file")
    if os.path.isdir(path):
        raise ValueError("is a folder, not an audio file")
    try:
        wave = decode_audio(path, sample_rate)  # (N,) mono float32 in [-1, 1]
    except (ValueError, OSError) as exc:
        raise ValueError(
            f"cannot decode it as audio ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    if len(wave) == 0:
        raise ValueError("holds no audio frames")
    answers = [probabilities(model, wave, crop_len) for model, crop_len in members]
    p, n = np.mean([a[0] for a in answers], axis=0), answers[0][1]
    order = np.argsort(-p)
    return {
        "file": path,
        "seconds": round(len(wave) / sample_rate, 3),
        "windows": n,
        "genre": label_names[int(order[0])],
        "ranking": [{"genre": label_names[int(i)], "probability": float(p[i])} for i in order],
    }


def _text(answer: dict, top: int, crop_seconds: float) -> str:
    lines = [
        f"{answer['file']}  ({answer['seconds']:.1f} s, {answer['windows']} window"
        f"{'s' if answer['windows'] != 1 else ''} of {crop_seconds:g} s)"
    ]
    width = max(len(r["genre"]) for r in answer["ranking"])
    for i, r in enumerate(answer["ranking"][:top], 1):
        lines.append(f"  {i}. {r['genre']:<{width}}  {r['probability']:.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 1:
        raise UserError(f"--top must be >= 1, got {args.top}")
    from mgc_ray.models import checkpoint as ckpt

    expect, run_id = None, None
    if args.search:
        from mgc_ray.search.tracking import resolve_search

        found = resolve_search(args.mlflow_uri, args.search)
        paths, expect, run_id = list(found.checkpoints), found.arch, found.run_id
    elif args.run_id:
        from mgc_ray.search.tracking import resolve_run

        run = resolve_run(args.mlflow_uri, args.run_id)
        paths, expect, run_id = [run.checkpoint], run.arch, run.run_id
    else:
        paths = [args.checkpoint]
    loaded = [ckpt.load_model(path, expect_arch=expect) for path in paths]
    ckpt.check_members([payload for _, payload in loaded], paths)
    payload = loaded[0][1]
    cfg = payload.model_config
    members = [(model, p.model_config.crop_samples) for model, p in loaded]
    label_names = list(payload.label_names)
    if len(members) > 1:
        print(f"mgc_ray: the ensemble of search {args.search} answers: {len(members)} models", file=sys.stderr)
    top = min(args.top, len(label_names))
    answers, failed = [], 0
    for f in args.files:
        try:
            answer = predict_file(members, f, cfg.sample_rate, label_names)
        except ValueError as exc:
            failed += 1
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"error: {f}: {msg}", file=sys.stderr, flush=True)
            answers.append({"file": f, "error": msg})
            continue
        answer["top"] = answer["ranking"][:top]
        answers.append(answer)
        if not args.json:
            print(_text(answer, top, cfg.crop_seconds), flush=True)
    if args.json:
        doc = {
            "checkpoint": str(paths[0]),
            "checkpoints": [str(p) for p in paths],
            "run_id": run_id,
            "arch": cfg.arch,
            "sample_rate": cfg.sample_rate,
            "crop_seconds": cfg.crop_seconds,
            "genres": label_names,
            "files": [
                {k: v for k, v in a.items() if k != "ranking"}
                | ({"probabilities": {r["genre"]: r["probability"] for r in a["ranking"]}} if "ranking" in a else {})
                for a in answers
            ],
        }
        print(json.dumps(doc, indent=2), flush=True)
    if failed:
        print(f"mgc_ray: {failed} of {len(args.files)} file(s) could not be read", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    run_cli(main)
