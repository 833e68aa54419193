"""Audio decoding: any file soundfile or librosa reads -> mono float32 at a given rate.

The one home of decoding: `prepare` (the cache builder) and `predict` (a user's
own files) both call `decode_audio`.

Decoding: soundfile (libsndfile, reads MP3, WAV, FLAC, OGG, AU), librosa/audioread
only where it fails; channels averaged to mono; resampled with scipy's
`resample_poly` (exact rational ratio, e.g. 44,100 -> 22,050 is 1:2 and 48,000 ->
22,050 is 147:320, with a linear-phase Kaiser anti-aliasing FIR; C code, no numba
start-up, the same output on every node); clipped to [-1, 1] (FMA's clips peak a
little above full scale).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from math import gcd

import numpy as np

from mgc_ray.config import CACHE_SAMPLE_RATE


@contextlib.contextmanager
def _native_stderr_silenced():
    """Silence fd 2 (mpg123 prints resync notes on broken files; the manifest gets the reason)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def _read_any(path: str) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 and its rate: soundfile, else librosa/audioread."""
    import soundfile as sf

    try:
        with _native_stderr_silenced():
            x, sr = sf.read(path, dtype="float32", always_2d=True)
        return x, int(sr)
    except Exception as sf_exc:  # noqa: BLE001 - any decoder failure makes the track bad, not the run
        try:
            with warnings.catch_warnings(), _native_stderr_silenced():
                warnings.simplefilter("ignore")
                import librosa

                y, sr = librosa.load(path, sr=None, mono=False)
        except Exception as lr_exc:  # noqa: BLE001
            msg = _first_line(sf_exc).replace(f"'{path}'", "file").replace(path, "file")
            raise ValueError(f"soundfile: {msg}; audioread: {_first_line(lr_exc)}") from None
        return np.atleast_2d(y).T.astype(np.float32), int(sr)


def decode_audio(path: str, sample_rate: int = CACHE_SAMPLE_RATE) -> np.ndarray:
    """Decode an audio file to a mono float32 waveform at `sample_rate`, clipped to [-1, 1].

    Args:
        path: an mp3 (or anything libsndfile or audioread reads).
        sample_rate: target rate.

    Returns:
        (n,) float32.

    Raises:
        ValueError: the file cannot be decoded (the message names both decoders' errors).
    """
    from scipy.signal import resample_poly

    x, sr = _read_any(path)
    mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    if sr != sample_rate and len(mono):
        g = gcd(int(sample_rate), int(sr))
        mono = resample_poly(mono, sample_rate // g, sr // g).astype(np.float32)
    return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)
