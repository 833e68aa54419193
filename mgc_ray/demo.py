"""The built-in demo dataset: synthetic music in FMA's layout, real mp3 files.

    python -m mgc_ray.demo --out DIR [--tracks-per-genre 16] [--seconds 15] [--seed 0]

writes `DIR/fma_metadata/tracks.csv` and `genres.csv` in FMA's own format and
`DIR/fma_small/XXX/XXXXXX.mp3`, so the demo goes through the same loader and
cache code as the real dataset. The eight fma_small genres differ the way a
model has to learn (rhythm, tempo, timbre, harmony, texture: see `synth_track`),
while each track draws its own key, tempo, loudness, mix, EQ and noise floor,
so no single statistic such as loudness or spectral centroid tells them apart.

Most tracks are 22,050 Hz mono (the cache rate: small files, a no-op resample);
every eighth track of each genre is 44.1 kHz stereo like real FMA clips (made at
22,050 Hz and upsampled), so the decoder's downmix and the resampler run on the
demo too, on every genre alike. Same seed, same audio: every track draws from
its own seeded generator. The default set (128 tracks x 15 s) takes ~17 s on 2 idle cores.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Sequence

import numpy as np
import pandas as pd

from mgc_ray.config import home
from mgc_ray.errors import Parser, UserError, run_cli
from mgc_ray.fma import audio_path, metadata_dir

# FMA's genre ids of the eight fma_small genres (genres.csv; all top level, parent 0).
GENRE_IDS = {"Electronic": 15, "Experimental": 38, "Folk": 17, "Hip-Hop": 21, "Instrumental": 1235,
             "International": 2, "Pop": 10, "Rock": 12}
MONO_RATE = 22_050      # the cache rate: mono files need no resampling
STEREO_RATE = 44_100    # real FMA clips: 44.1 kHz stereo
STEREO_EVERY = 8        # track j of a genre is stereo when j % 8 == 3 (one in 8, every genre)
MAX_TRACK_ID = 155_066  # the largest fma_small track id: demo ids look like real ones
SPLIT_SHARE = 0.1       # FMA's set.split: ~80/10/10 training/validation/test per genre
MAX_WORKERS = 8         # processes writing tracks; synthesis and mp3 encoding are CPU-bound
PARALLEL_SECONDS = 600  # below this much audio (~25 s of work) starting worker processes costs more than it saves
PARAMS_FILE = "demo.json"  # beside tracks.csv: the settings a demo folder was written with

# tracks.csv's columns, in FMA's order (52; read with header=[0, 1]).
COLUMNS = [(group, name) for group, names in (
    ("album", "comments date_created date_released engineer favorites id information listens producer "
              "tags title tracks type"),
    ("artist", "active_year_begin active_year_end associated_labels bio comments date_created favorites id "
               "latitude location longitude members name related_projects tags website wikipedia_page"),
    ("set", "split subset"),
    ("track", "bit_rate comments composer date_created date_recorded duration favorites genre_top genres "
              "genres_all information interest language_code license listens lyricist number publisher tags "
              "title"),
) for name in names.split()]


GENRES = ("Electronic", "Experimental", "Folk", "Hip-Hop", "Instrumental", "International", "Pop", "Rock")

# --- synthesis: a few numpy instruments ------------------------------------------
# Scales in semitones. The genres use different ones (harmony is a cue too).
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
PENTATONIC = (0, 2, 4, 7, 9)
HIJAZ = (0, 1, 4, 5, 7, 8, 10)  # a maqam: its augmented second (1 -> 4) is un-Western
VOWELS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410))  # a e i o formants, Hz


def _hz(root: float, semitones) -> np.ndarray:
    return root * 2.0 ** (np.asarray(semitones, dtype=float) / 12.0)


def _memo(cache: dict, key, make):
    """cache[key], made once: loops repeat their notes, so each is synthesised once per track."""
    if key not in cache:
        cache[key] = make()
    return cache[key]


class _Canvas:
    """A mono buffer that sounds are added into at times in seconds (clipped at both ends)."""

    def __init__(self, seconds: float, sr: int):
        self.sr, self.x = sr, np.zeros(int(round(seconds * sr)))

    def add(self, t: float, wave: np.ndarray, gain: float = 1.0) -> None:
        i, n = int(round(t * self.sr)), len(self.x)
        a, b = max(i, 0), min(i + len(wave), n)
        if a < b:
            self.x[a:b] += gain * wave[a - i:b - i]


def _tone(f0: float, dur: float, sr: int, amps, decay=None, attack: float = 0.005, ratios=None,
          vibrato: tuple[float, float] = (0.0, 5.0), glide: float = 0.0) -> np.ndarray:
    """Additive note: partial k at f0 * ratios[k] (default harmonics), amplitude amps[k].

    decay: None (sustained), a time constant in s, or one per partial (higher ones die
    sooner, like a string); vibrato: (depth as a frequency fraction, rate Hz); glide:
    octaves the pitch slides over the note.
    """
    n = max(int(dur * sr), 2)
    t = np.arange(n) / sr
    amps = np.asarray(amps, dtype=float)
    ratios = np.arange(1, len(amps) + 1.0) if ratios is None else np.asarray(ratios, dtype=float)
    keep = f0 * ratios * 2.0 ** max(glide, 0.0) * (1 + vibrato[0]) < 0.45 * sr  # no aliasing
    amps, ratios = amps[keep], ratios[keep]
    f = f0 * (1 + vibrato[0] * np.sin(2 * np.pi * vibrato[1] * t)) * 2.0 ** (glide * t / t[-1])
    phase = 2 * np.pi * np.cumsum(f) / sr
    parts = np.sin(ratios[:, None] * phase[None, :])  # (K, n)
    if decay is not None:
        tau = np.broadcast_to(np.asarray(decay, dtype=float), (len(keep),))[keep]
        parts *= np.exp(-t[None, :] / tau[:, None])
    env = np.minimum(t / attack, 1.0) * np.minimum((t[-1] - t) / 0.01 + 1e-3, 1.0)  # 10-ms release
    return np.einsum("k,kn->n", amps, parts) * env  # not `@`: BLAS threads would fight the worker processes


def _noise(n: int, rng: np.random.Generator, alpha: float = 0.0) -> np.ndarray:
    """Unit-RMS noise with power ~ 1/f^alpha (0 white, 1 pink, 2 brown, -2 violet)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    k = np.arange(len(spec), dtype=float)
    k[0] = 1.0
    x = np.fft.irfft(spec * k ** (-alpha / 2), n)
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def _band_noise(n: int, sr: int, rng: np.random.Generator, centre: float, octaves: float) -> np.ndarray:
    """Noise in a band `octaves` wide around `centre` Hz (a Gaussian on log frequency)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1 / sr), 1.0)
    x = np.fft.irfft(spec * np.exp(-0.5 * (np.log2(f / centre) / (octaves / 2)) ** 2), n)
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def _lowpass(x: np.ndarray, sr: int, fc: float) -> np.ndarray:
    from scipy.signal import lfilter

    a = np.exp(-2 * np.pi * fc / sr)  # one pole
    return lfilter([1 - a], [1, -a], x)


def _hit(sr: int, rng: np.random.Generator, decay: float, alpha: float, dur: float | None = None) -> np.ndarray:
    """A noise burst (hat, cymbal, snare body): coloured noise, exponential decay."""
    n = int((dur or 5 * decay) * sr)
    return _noise(n, rng, alpha) * np.exp(-np.arange(n) / sr / decay)


def _kick(sr: int, f_hi: float, f_lo: float, decay: float) -> np.ndarray:
    t = np.arange(int(5 * decay * sr)) / sr
    f = f_lo + (f_hi - f_lo) * np.exp(-t / 0.03)  # the pitch drop that makes a kick
    return np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / decay)


def _snare(sr: int, rng: np.random.Generator, decay: float) -> np.ndarray:
    body = _kick(sr, 260, 180, decay * 0.5)
    noise = _hit(sr, rng, decay, -0.5, dur=len(body) / sr)
    return 0.6 * body + noise


def _grid(seconds: float, bpm: float, rng: np.random.Generator, steps: int, per_beat: int = 4):
    """Step times of a loop: (time of step s of bar b) for every bar covering the clip."""
    step = 60.0 / bpm / per_beat
    t0 = -rng.uniform(0, steps * step)  # the clip starts anywhere in a bar
    bars = int(np.ceil((seconds - t0) / (steps * step)))
    return (lambda bar, s: t0 + (bar * steps + s) * step), step, bars


def _pluck_amps(k: int, pos: float) -> np.ndarray:
    n = np.arange(1, k + 1)
    return np.abs(np.sin(np.pi * n * pos)) / n  # a string plucked at `pos` of its length


def _electronic(rng, seconds, sr, root):
    at, step, bars = _grid(seconds, rng.uniform(120, 132), rng, 16)
    kick, hat = _kick(sr, 110, 48, 0.16), _hit(sr, rng, 0.05, -2)
    c = {k: _Canvas(seconds, sr) for k in ("kick", "hat", "bass", "arp")}
    chords = [(0, 3, 7), (8, 12, 15), (3, 7, 10), (10, 14, 17)]  # i VI III VII
    saw = 1 / np.arange(1, 25)
    square = np.where(np.arange(1, 16) % 2 == 1, 1 / np.arange(1, 16), 0.0)
    notes: dict = {}
    for bar in range(bars):
        ch = chords[bar % 4]
        for s in range(16):
            t = at(bar, s)
            if s % 4 == 0:
                c["kick"].add(t, kick)
            if s % 4 == 2:
                c["hat"].add(t, hat, rng.uniform(0.7, 1.0))
                c["bass"].add(t, _memo(notes, ("bass", ch[0]), lambda: _tone(_hz(root / 2, ch[0]), 2 * step, sr,
                                                                             saw, 0.12)))
            semi = ch[s % 3] + 12 * (s // 8 % 2)  # arpeggio over two octaves
            c["arp"].add(t, _memo(notes, semi, lambda: _tone(_hz(root * 2, semi), step, sr, square, 0.08)))
    t = np.arange(len(c["bass"].x)) / sr
    pump = 1 - 0.7 * np.exp(-((t - at(0, 0)) % (4 * step)) / 0.1)  # side-chained to the kick
    return [(c["kick"].x, 0), (c["hat"].x, -10), (c["bass"].x * pump, -4), (c["arp"].x * pump, -8)]


def _experimental(rng, seconds, sr, root):
    c = {k: _Canvas(seconds, sr) for k in ("glide", "bell", "swell", "click")}
    for _ in range(rng.poisson(0.7 * seconds)):  # sliding tones, no pulse, no scale
        f, dur = np.exp(rng.uniform(np.log(80), np.log(2500))), rng.uniform(0.5, 3)
        amps = rng.uniform(0, 0.5) ** np.arange(3)
        w = _tone(f, dur, sr, amps, attack=dur / 3, glide=rng.uniform(-2, 2))
        c["glide"].add(rng.uniform(-1, seconds), w * np.sin(np.linspace(0, np.pi, len(w))))
    for _ in range(rng.poisson(0.5 * seconds)):  # inharmonic bells: a bar's partials
        ratios = np.array([1, 2.76, 5.40, 8.93, 13.34])
        w = _tone(np.exp(rng.uniform(np.log(150), np.log(1200))), 2.5, sr, [1, .6, .4, .25, .2],
                  rng.uniform(0.6, 2.0) / ratios ** 0.5, attack=0.002, ratios=ratios)
        c["bell"].add(rng.uniform(-1, seconds), w)
    for _ in range(rng.poisson(0.25 * seconds)):  # filtered noise swells
        n = int(rng.uniform(1, 4) * sr)
        w = _band_noise(n, sr, rng, np.exp(rng.uniform(np.log(200), np.log(5000))), rng.uniform(0.3, 1))
        c["swell"].add(rng.uniform(-1, seconds), w * np.sin(np.linspace(0, np.pi, n)) ** 2)
    click = _hit(sr, rng, 0.002, 0)
    for _ in range(rng.poisson(0.4 * seconds)):  # glitch clusters
        t, gap = rng.uniform(0, seconds), rng.uniform(0.01, 0.04)
        for i in range(rng.integers(5, 20)):
            c["click"].add(t + i * gap, click, rng.uniform(0.3, 1))
    return [(c["glide"].x, -2), (c["bell"].x, -4), (c["swell"].x, -6), (c["click"].x, -12)]


def _folk(rng, seconds, sr, root):
    at, step, bars = _grid(seconds, rng.uniform(84, 108), rng, 6, per_beat=2)  # 6/8 in eighths
    c = {k: _Canvas(seconds, sr) for k in ("guitar", "bass", "whistle", "shaker")}
    pos = rng.uniform(0.12, 0.25)
    shaker = _band_noise(int(0.15 * sr), sr, rng, 7000, 1.0) * np.exp(-np.arange(int(0.15 * sr)) / sr / 0.03)
    k = np.arange(1, 31)
    ratios = k * np.sqrt(1 + 1e-4 * k ** 2)  # a slightly stiff string
    pluck = {}
    prog = (0, 5, 7, 0)  # I IV V I
    note, notes = 7, {}
    for bar in range(bars):
        r = prog[bar % 4]
        third = 4 if r != 9 else 3
        for s, semi in enumerate((r, r + 7, r + 12, r + 12 + third, r + 7, r + 12)):
            if semi not in pluck:
                pluck[semi] = _tone(_hz(root, semi), 1.0, sr, _pluck_amps(30, pos), 0.6 / (1 + 0.3 * k),
                                    attack=0.002, ratios=ratios)
            c["guitar"].add(at(bar, s), pluck[semi], rng.uniform(0.7, 1))
            c["shaker"].add(at(bar, s), shaker, 1.0 if s % 3 == 0 else 0.5)
            if s % 3 == 0:  # a strum on each dotted beat: the chord's strings 15 ms apart
                for i, v in enumerate((r, r + 7, r + 12, r + 12 + third)):
                    c["guitar"].add(at(bar, s) + 0.015 * (i + 1), pluck[v] if v in pluck else pluck[semi], 0.6)
        c["bass"].add(at(bar, 0), _memo(notes, ("bass", r), lambda: _tone(_hz(root / 2, r), 2.0, sr,
                                                                          _pluck_amps(12, 0.2), 1.0, attack=0.003)))
        for s in (0, 2, 4):  # a whistle tune in quarter notes, with rests
            note = int(np.clip(note + rng.integers(-2, 3), 0, 13))
            if rng.random() < 0.7:
                f = _hz(root * 4, MAJOR[note % 7] + 12 * (note // 7))
                c["whistle"].add(at(bar, s), _memo(notes, f, lambda: _tone(f, 1.9 * step, sr, [1, .2, .08],
                                                                           attack=0.04, vibrato=(0.006, 5.5))))
    return [(c["guitar"].x, 0), (c["bass"].x, -6), (c["whistle"].x, -8), (c["shaker"].x, -12)]


def _hip_hop(rng, seconds, sr, root):
    at0, step, bars = _grid(seconds, rng.uniform(80, 96), rng, 16)
    swing = rng.uniform(0.1, 0.3) * step

    def at(bar, s):
        return at0(bar, s) + swing * (s % 2)  # late off-beat sixteenths

    kicks = [(0, 7, 10), (0, 3, 10), (0, 7, 8, 10)][rng.integers(3)]
    kick, snare, hat = _kick(sr, 90, 42, 0.25), _snare(sr, rng, 0.2), _hit(sr, rng, 0.025, -2)
    c = {k: _Canvas(seconds, sr) for k in ("kick", "snare", "hat", "sub", "stab", "vinyl")}
    sub = {r: _tone(_hz(root / 4, r), 0.8, sr, [1, .15], 0.5, glide=-0.05) for r in (0, 10, 7)}
    k = np.arange(1, 9)
    stab = sum(_tone(f, 2.2, sr, 1 / k ** 2, 0.6) for f in _hz(root, (0, 3, 7, 10)))  # dusty min7
    for bar in range(bars):
        r = (0, 0, 10, 7)[bar % 4]
        c["stab"].add(at(bar, 0), stab)
        for s in range(16):
            if s in kicks:
                c["kick"].add(at(bar, s), kick)
                c["sub"].add(at(bar, s), sub[r])
            if s in (4, 12):
                c["snare"].add(at(bar, s), snare)
            if s % 2 == 0:
                c["hat"].add(at(bar, s), hat, rng.uniform(0.4, 1))
    n = len(c["vinyl"].x)
    crackle = np.zeros(n)
    crackle[rng.integers(0, n, int(15 * seconds))] = rng.uniform(-1, 1, int(15 * seconds))
    c["vinyl"].x = crackle + 0.05 * _noise(n, rng, 1)
    return [(c["kick"].x, 0), (c["snare"].x, -3), (c["hat"].x, -12), (c["sub"].x, -3), (c["stab"].x, -8),
            (c["vinyl"].x, -24)]


def _instrumental(rng, seconds, sr, root):
    at, step, bars = _grid(seconds, rng.uniform(60, 76), rng, 8, per_beat=2)  # 4/4 in eighths
    c = {k: _Canvas(seconds, sr) for k in ("pad", "piano", "cello")}
    k = np.arange(1, 17)
    piano_decay, piano_ratios = 1.8 / (1 + 0.25 * k), k * np.sqrt(1 + 2e-4 * k ** 2)
    prog = ((0, 4, 7, 11), (9, 12, 16, 19), (5, 9, 12, 16), (7, 11, 14, 17))  # Imaj7 vi7 IVmaj7 V7
    notes: dict = {}
    dur = 16 * step + 0.8
    for bar in range(0, bars, 2):  # one chord per two bars, slow attack and release
        ch = prog[(bar // 2) % 4]
        c["pad"].add(at(bar, 0), _memo(notes, ch, lambda: sum(  # detuned voices beat slowly
            _tone(f * d, dur, sr, 1 / np.arange(1, 9) ** 1.6, attack=0.6, vibrato=(0.003, 4.5))
            for f in _hz(root, ch) for d in (0.996, 1.004))))
        c["cello"].add(at(bar, 0), _memo(notes, ch[0], lambda: _tone(_hz(root / 2, ch[0]), dur, sr,
                                                                     1 / np.arange(1, 11), attack=0.3,
                                                                     vibrato=(0.004, 5))))
        for s in range(16):
            if rng.random() < 0.35:  # a sparse piano line
                semi = MAJOR[rng.integers(7)] + 12 * rng.integers(2)
                c["piano"].add(at(bar, s), _memo(notes, ("piano", semi), lambda: _tone(
                    _hz(root * 2, semi), 2.0, sr, 1 / k ** 1.3, piano_decay, 0.003, piano_ratios)))
    return [(c["pad"].x, 0), (c["piano"].x, -2), (c["cello"].x, -6)]


def _international(rng, seconds, sr, root):
    at, step, bars = _grid(seconds, rng.uniform(100, 140), rng, 7, per_beat=2)  # 7/8: 3+2+2 eighths
    c = {k: _Canvas(seconds, sr) for k in ("drone", "sitar", "dum", "tek")}
    t = np.arange(len(c["drone"].x)) / sr
    for f in _hz(root / 2, (0, 7)):  # tanpura-like drone, bright and shimmering
        w = _tone(f, seconds, sr, 1 / np.arange(1, 17) ** 0.7, attack=0.5)
        c["drone"].x += w * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * t + rng.uniform(0, 6.3)))
    tt = np.arange(int(0.6 * sr)) / sr
    dum = np.sin(2 * np.pi * np.cumsum(120 - 40 * np.exp(-tt / 0.08)) / sr) * np.exp(-tt / 0.25)  # rising bass stroke
    tek = _tone(rng.uniform(350, 550), 0.5, sr, [1, .6, .5, .3, .2], 0.12, attack=0.001) + _hit(sr, rng, 0.005, 0, 0.5)
    k = np.arange(1, 26)
    note, notes = 4, {}
    for bar in range(bars):
        for s in range(7):
            if s in (0, 3):
                c["dum"].add(at(bar, s), dum)
            else:
                c["tek"].add(at(bar, s), tek, rng.uniform(0.5, 1))
                if rng.random() < 0.3:
                    c["tek"].add(at(bar, s) + step / 2, tek, rng.uniform(0.2, 0.5))
        s = 0
        while s < 7:  # sitar phrase with slides (meend) between notes
            dur = int(rng.integers(1, 4))
            nxt = int(np.clip(note + rng.integers(-2, 3), 0, 13))
            f = _hz(root, HIJAZ[note % 7] + 12 * (note // 7))
            glide = (HIJAZ[nxt % 7] + 12 * (nxt // 7) - HIJAZ[note % 7] - 12 * (note // 7)) / 12
            glide = glide if rng.random() < 0.4 else 0.0
            c["sitar"].add(at(bar, s), _memo(notes, (f, dur, glide), lambda: _tone(
                f, dur * step, sr, 1 / k ** 0.8, 0.9 / (1 + 0.08 * k), 0.002, vibrato=(0.012, 6.5), glide=glide)))
            note, s = nxt, s + dur
    return [(c["drone"].x, -12), (c["sitar"].x, 0), (c["dum"].x, 0), (c["tek"].x, -2)]


def _voice(f0: float, dur: float, sr: int, vowel) -> np.ndarray:
    k = np.arange(1, int(4000 / f0) + 1)
    amps = sum(g * np.exp(-0.5 * ((k * f0 - fm) / 120) ** 2) for g, fm in zip((1, .5, .25), vowel)) + 0.02 / k
    return _tone(f0, dur, sr, amps, attack=0.06, vibrato=(0.015, 5.5))


def _pop(rng, seconds, sr, root):
    at, step, bars = _grid(seconds, rng.uniform(96, 122), rng, 16)
    kick, hat = _kick(sr, 130, 55, 0.12), _hit(sr, rng, 0.02, -2)
    gap = int(0.01 * sr)  # a clap: three bursts 10 ms apart
    clap = sum(np.pad(_hit(sr, rng, 0.03, -1, 0.25), (i * gap, (2 - i) * gap)) for i in range(3))
    c = {k: _Canvas(seconds, sr) for k in ("drums", "keys", "voice", "bass")}
    k = np.arange(1, 13)
    prog = ((0, 4, 7), (7, 11, 14), (9, 12, 16), (5, 9, 12))  # I V vi IV
    keys = {i: sum(_tone(f, 4 * step, sr, 1 / k ** 1.5, 0.5 / (1 + 0.2 * k)) for f in _hz(root * 2, ch))
            for i, ch in enumerate(prog)}
    note, notes = 2, {}
    for bar in range(bars):
        ch = prog[bar % 4]
        for s in range(16):
            t = at(bar, s)
            if s in (0, 8, 10):
                c["drums"].add(t, kick)
            if s in (4, 12):
                c["drums"].add(t, clap, 0.8)
            if s % 2 == 0:
                c["drums"].add(t, hat, 0.3)
                c["bass"].add(t, _memo(notes, ch[0], lambda: _tone(_hz(root / 2, ch[0]), 2 * step, sr,
                                                                   [1, .5, .25], 0.3)))
            if s % 4 == 0:
                c["keys"].add(t, keys[bar % 4])
        s = 0
        while s < 16:  # a sung line: pentatonic, one or two beats a note
            dur = 4 * int(rng.integers(1, 3))
            note = int(np.clip(note + rng.integers(-2, 3), 0, 9))
            f, vowel = _hz(root * 2, PENTATONIC[note % 5] + 12 * (note // 5)), int(rng.integers(4))
            c["voice"].add(at(bar, s), _memo(notes, (f, dur, vowel), lambda: _voice(f, dur * step, sr,
                                                                                    VOWELS[vowel])))
            s += dur
    return [(c["drums"].x, -4), (c["keys"].x, -6), (c["voice"].x, 0), (c["bass"].x, -6)]


def _rock(rng, seconds, sr, root):
    at, step, bars = _grid(seconds, rng.uniform(112, 160), rng, 16)
    kick, snare = _kick(sr, 120, 50, 0.14), _snare(sr, rng, 0.15)
    crash, ride = _hit(sr, rng, 0.9, -1.5), _hit(sr, rng, 0.08, -2)
    c = {k: _Canvas(seconds, sr) for k in ("guitar", "drums", "cymbals", "bass")}
    drive, saw = rng.uniform(4, 12), 1 / np.arange(1, 21)
    chug = {}
    for bar in range(bars):
        r = (0, 10, 5, 0)[bar % 4]  # I bVII IV I
        if r not in chug:  # power chord (root, fifth, octave) through a distortion and a cabinet
            w = sum(_tone(f, 2 * step, sr, saw, 1.0) for f in _hz(root / 2, (r, r + 7, r + 12)))
            chug[r] = _lowpass(np.tanh(drive * w / np.abs(w).max()), sr, 5000)
        if bar % 2 == 0:
            c["cymbals"].add(at(bar, 0), crash)
        for s in range(16):
            t = at(bar, s)
            if s % 2 == 0:
                c["guitar"].add(t, chug[r], rng.uniform(0.8, 1))
                c["cymbals"].add(t, ride, 0.4)
                c["bass"].add(t, _memo(chug, ("bass", r), lambda: _tone(_hz(root / 4, r), 2 * step, sr,
                                                                        saw[:10], 0.3)))
            if s in (0, 6, 8):
                c["drums"].add(t, kick)
            if s in (4, 12):
                c["drums"].add(t, snare)
    return [(c["guitar"].x, 0), (c["drums"].x, -2), (c["cymbals"].x, -6), (c["bass"].x, -6)]


_GENRE_SYNTH = dict(zip(GENRES, (_electronic, _experimental, _folk, _hip_hop, _instrumental, _international,
                                 _pop, _rock)))


def synth_track(genre: str, seconds: float, sr: int, rng: np.random.Generator, channels: int = 1) -> np.ndarray:
    """One synthetic clip of a genre, with this track's own key, tempo, mix and sound.

    The genre fixes the instruments, rhythm, scale and tempo range; the track draws
    its key (any of 12), tempo, each element's level (+-6 dB), pan, a high shelf
    (-14..+8 dB above 0.4-3 kHz), a noise floor of random colour (-45..-25 dB) and a
    loudness (-30..-14 dBFS RMS), so loudness and brightness overlap across genres.

    Args:
        genre: one of GENRES.
        seconds: clip length.
        sr: sample rate.
        rng: this track's generator (same state, same clip).
        channels: 1 (mono) or 2 (stereo: elements panned).

    Returns:
        float32 (n,) for mono or (n, 2) for stereo, peak <= 0.95.
    """
    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)  # A2 .. G#3: any key
    elements = _GENRE_SYNTH[genre](rng, seconds, sr, root)
    n = int(round(seconds * sr))
    fc, shelf = np.exp(rng.uniform(np.log(400), np.log(3000))), 10 ** (rng.uniform(-10, 6) / 20)
    out = np.zeros((n, channels))
    for x, level in elements:
        rms = np.sqrt(np.mean(x ** 2))
        if rms == 0:
            continue
        g = 10 ** ((level + rng.uniform(-4, 4)) / 20) / rms
        pan = (rng.uniform(-0.6, 0.6) + 1) * np.pi / 4
        gains = (np.cos(pan), np.sin(pan)) if channels == 2 else (np.sqrt(0.5),)
        for ch in range(channels):
            out[:, ch] += gains[ch] * g * x
    low = np.stack([_lowpass(out[:, ch], sr, fc) for ch in range(channels)], axis=1)
    out = low + shelf * (out - low)  # a random high shelf: brightness is no genre cue
    rms = np.sqrt(np.mean(out ** 2))
    alpha = rng.choice([-1.0, 0.0, 1.0, 2.0])  # noise colour: blue, white, pink, brown
    floor = 10 ** (rng.uniform(-45, -25) / 20) * rms
    out += floor * np.stack([_noise(n, rng, alpha) for _ in range(channels)], axis=1)
    out *= 10 ** (rng.uniform(-30, -14) / 20) / np.sqrt(np.mean(out ** 2))
    out *= min(1.0, 0.95 / np.abs(out).max())  # no clipping in the mp3
    fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.01 * sr))[:, None]
    out = (out * fade).astype(np.float32)
    return out[:, 0] if channels == 1 else out


def default_demo_dir() -> str:
    """Where the demo goes when no --out is given: `<$MGC_HOME>/demo/fma`, where the tune
    command looks for it when no data is given."""
    return str(home() / "demo" / "fma")


def official_splits(n: int, rng: np.random.Generator) -> np.ndarray:
    """FMA-style `set.split` for one genre's n tracks: ~80/10/10, val and test never empty for n >= 3.

    Args:
        n: tracks of the genre.
        rng: generator for the shuffle.

    Returns:
        (n,) array of "training" | "validation" | "test".
    """
    k = max(1, int(np.floor(SPLIT_SHARE * n + 0.5))) if n >= 3 else 0
    out = np.array(["training"] * n, dtype=object)
    order = rng.permutation(n)
    out[order[:k]] = "validation"
    out[order[k:2 * k]] = "test"
    return out


def demo_tracks(tracks_per_genre: int, seconds: float, seed: int) -> pd.DataFrame:
    """The demo's tracks.csv rows (FMA's columns), indexed by track_id.

    Args:
        tracks_per_genre: tracks of each of the eight genres.
        seconds: clip length (becomes track.duration).
        seed: seed of track ids and splits.

    Returns:
        DataFrame with the MultiIndex columns of FMA's tracks.csv, plus the
        private columns ("demo", "index") (track number within its genre) and
        ("demo", "stereo"), which `write_demo` drops before writing.
    """
    rng = np.random.default_rng([seed, 2017])  # 2017: FMA's year, a fixed stream for ids and splits
    total = tracks_per_genre * len(GENRES)
    ids = np.sort(rng.choice(np.arange(2, MAX_TRACK_ID + 1), size=total, replace=False))
    ids = ids[rng.permutation(total)]  # ids in random order: no id range belongs to a genre
    rows = []
    for g, genre in enumerate(GENRES):
        splits = official_splits(tracks_per_genre, rng)
        for j in range(tracks_per_genre):
            tid = int(ids[g * tracks_per_genre + j])
            artist = g * 100 + j // 4 + 1  # four tracks per artist, as on an album
            gid = GENRE_IDS[genre]
            rows.append({
                ("album", "id"): artist, ("album", "title"): f"Demo {genre} Album {j // 4 + 1}",
                ("album", "tracks"): 4, ("album", "type"): "Album",
                ("artist", "id"): artist, ("artist", "name"): f"Demo {genre} Artist {j // 4 + 1}",
                ("set", "split"): splits[j], ("set", "subset"): "small",
                ("track", "bit_rate"): 64000, ("track", "duration"): int(round(seconds)),
                ("track", "genre_top"): genre, ("track", "genres"): f"[{gid}]", ("track", "genres_all"): f"[{gid}]",
                ("track", "license"): "Synthetic audio written by mgc_ray.demo", ("track", "number"): j % 4 + 1,
                ("track", "title"): f"{genre} demo {j + 1:03d}", ("track", "interest"): 0,
                ("track", "listens"): 0, ("track", "favorites"): 0, ("track", "comments"): 0,
                ("track", "tags"): "[]", ("album", "tags"): "[]", ("artist", "tags"): "[]",
                ("demo", "index"): j, ("demo", "stereo"): j % STEREO_EVERY == 3,
                "track_id": tid,
            })
    df = pd.DataFrame(rows).set_index("track_id").sort_index()
    df.columns = pd.MultiIndex.from_tuples(df.columns)
    return df.reindex(columns=COLUMNS + [("demo", "index"), ("demo", "stereo")])  # unfilled columns: empty


def write_track(root: str, track_id: int, genre: str, index: int, stereo: bool, seconds: float, seed: int) -> str:
    """Synthesise one demo track and write its mp3 atomically (skipped if already there).

    Stereo tracks are synthesised at 22,050 Hz and upsampled to 44.1 kHz: the cache
    rate's band is all a model sees, and the file still exercises the resampler.

    Args:
        root: the demo's FMA root.
        track_id, genre: from `demo_tracks`.
        index: the track's number within its genre (seeds its generator).
        stereo: write 44.1 kHz stereo instead of 22,050 Hz mono.
        seconds, seed: the demo's settings.

    Returns:
        The mp3 path.
    """
    import soundfile as sf
    from scipy.signal import resample_poly

    path = audio_path(root, track_id, "small")
    if os.path.exists(path):  # final names are only ever complete files
        return path
    rng = np.random.default_rng([seed, GENRES.index(genre), index])  # per track: independent of the others
    audio = synth_track(genre, seconds, MONO_RATE, rng, channels=2 if stereo else 1)
    if stereo:
        audio = np.clip(resample_poly(audio, STEREO_RATE // MONO_RATE, 1, axis=0), -1, 1).astype(np.float32)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    sf.write(tmp, audio, STEREO_RATE if stereo else MONO_RATE, format="MP3")
    os.replace(tmp, path)
    return path


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _genres_csv(counts: dict[str, int]) -> str:
    rows = [(GENRE_IDS[g], counts[g], 0, g, GENRE_IDS[g]) for g in GENRES]
    df = pd.DataFrame(sorted(rows), columns=["genre_id", "#tracks", "parent", "title", "top_level"])
    return df.to_csv(index=False)


def write_demo(out: str | os.PathLike, tracks_per_genre: int = 16, seconds: float = 15.0, seed: int = 0,
               progress: bool = False) -> str:
    """Write the demo dataset in FMA's layout (idempotent, atomic file by file).

    tracks.csv is written last: a folder with tracks.csv is a finished demo. A
    finished demo with the same settings is left as it is.

    Args:
        out: the demo's FMA root (created).
        tracks_per_genre: tracks of each of the eight genres (>= 3 so every split gets some).
        seconds: clip length in seconds (>= 1).
        seed: same seed, same ids, splits and audio.
        progress: print one line when done.

    Returns:
        The FMA root written (absolute path).

    Raises:
        UserError: bad sizes, or `out` holds other data (another demo or real FMA).
    """
    if tracks_per_genre < 3:
        raise UserError(f"--tracks-per-genre {tracks_per_genre} is too small: use 3 or more "
                        "(every genre needs a track in training, validation and test)")
    if not seconds >= 1.0:
        raise UserError(f"--seconds {seconds} is too short: use 1 or more (the cache drops clips under 2 s)")
    root = os.path.abspath(os.fspath(out))
    meta = metadata_dir(root)
    params = {"tracks_per_genre": int(tracks_per_genre), "seconds": float(seconds), "seed": int(seed)}
    params_path, tracks_csv = os.path.join(meta, PARAMS_FILE), os.path.join(meta, "tracks.csv")
    if os.path.exists(params_path):
        with open(params_path, encoding="utf-8") as f:
            old = json.load(f)
        if old != params:
            raise UserError(f"{root} holds a demo written with {old}, not {params}; use another --out")
        if os.path.isfile(tracks_csv):
            return root
    elif os.path.exists(tracks_csv):
        raise UserError(f"{root} already holds an FMA dataset that is not this demo; use another --out")
    try:
        os.makedirs(meta, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {root} cannot be created ({exc.strerror}): choose a writable folder") from None
    _atomic_write_text(params_path, json.dumps(params, indent=1) + "\n")

    start = time.perf_counter()
    df = demo_tracks(tracks_per_genre, seconds, seed)
    jobs = [(root, int(tid), row[("track", "genre_top")], int(row[("demo", "index")]), bool(row[("demo", "stereo")]),
             float(seconds), int(seed)) for tid, row in df.iterrows()]
    workers = min(os.cpu_count() or 1, MAX_WORKERS) if len(jobs) * seconds >= PARALLEL_SECONDS else 1
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: safe in a process that already runs threads (Ray, torch)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(write_track, *zip(*jobs)))
    else:
        for job in jobs:
            write_track(*job)
    counts = df[("track", "genre_top")].value_counts().to_dict()
    _atomic_write_text(os.path.join(meta, "genres.csv"), _genres_csv(counts))
    _atomic_write_text(tracks_csv, df[COLUMNS].to_csv())  # last: marks the demo finished
    if progress:
        print(f"wrote {len(df)} demo tracks ({tracks_per_genre} x {len(GENRES)} genres x {seconds:g} s) "
              f"to {root} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m mgc_ray.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help=f"FMA root to write (default {default_demo_dir()})")
    p.add_argument("--tracks-per-genre", type=int, default=16, help="tracks per genre (default 16)")
    p.add_argument("--seconds", type=float, default=15.0, help="clip length in seconds (default 15)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same dataset (default 0)")
    args = p.parse_args(argv)
    root = write_demo(args.out or default_demo_dir(), args.tracks_per_genre, args.seconds, args.seed,
                      progress=True)
    print(root)
    return 0


if __name__ == "__main__":
    run_cli(main)
