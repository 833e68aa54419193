"""The demo's synthetic music: a few numpy instruments and one arrangement per fma_small genre.

`synth_track` makes one clip; `mgc_ray.demo` writes clips as mp3 files in FMA's
layout. The genres differ the way a model has to learn (rhythm, tempo, timbre,
harmony, texture), while each track draws its own key, tempo, loudness, mix, EQ
and noise floor, so no single statistic tells them apart.
"""

from __future__ import annotations

import numpy as np

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
            self.x[a:b] += gain * wave[a - i : b - i]


def _tone(
    f0: float,
    dur: float,
    sr: int,
    amps,
    decay=None,
    attack: float = 0.005,
    ratios=None,
    vibrato: tuple[float, float] = (0.0, 5.0),
    glide: float = 0.0,
) -> np.ndarray:
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
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _band_noise(n: int, sr: int, rng: np.random.Generator, centre: float, octaves: float) -> np.ndarray:
    """Noise in a band `octaves` wide around `centre` Hz (a Gaussian on log frequency)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1 / sr), 1.0)
    x = np.fft.irfft(spec * np.exp(-0.5 * (np.log2(f / centre) / (octaves / 2)) ** 2), n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


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
                c["bass"].add(
                    t, _memo(notes, ("bass", ch[0]), lambda: _tone(_hz(root / 2, ch[0]), 2 * step, sr, saw, 0.12))
                )
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
        w = _tone(
            np.exp(rng.uniform(np.log(150), np.log(1200))),
            2.5,
            sr,
            [1, 0.6, 0.4, 0.25, 0.2],
            rng.uniform(0.6, 2.0) / ratios**0.5,
            attack=0.002,
            ratios=ratios,
        )
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
    ratios = k * np.sqrt(1 + 1e-4 * k**2)  # a slightly stiff string
    pluck = {}
    prog = (0, 5, 7, 0)  # I IV V I
    note, notes = 7, {}
    for bar in range(bars):
        r = prog[bar % 4]
        third = 4 if r != 9 else 3
        for s, semi in enumerate((r, r + 7, r + 12, r + 12 + third, r + 7, r + 12)):
            if semi not in pluck:
                pluck[semi] = _tone(
                    _hz(root, semi), 1.0, sr, _pluck_amps(30, pos), 0.6 / (1 + 0.3 * k), attack=0.002, ratios=ratios
                )
            c["guitar"].add(at(bar, s), pluck[semi], rng.uniform(0.7, 1))
            c["shaker"].add(at(bar, s), shaker, 1.0 if s % 3 == 0 else 0.5)
            if s % 3 == 0:  # a strum on each dotted beat: the chord's strings 15 ms apart
                for i, v in enumerate((r, r + 7, r + 12, r + 12 + third)):
                    c["guitar"].add(at(bar, s) + 0.015 * (i + 1), pluck[v] if v in pluck else pluck[semi], 0.6)
        c["bass"].add(
            at(bar, 0),
            _memo(
                notes, ("bass", r), lambda: _tone(_hz(root / 2, r), 2.0, sr, _pluck_amps(12, 0.2), 1.0, attack=0.003)
            ),
        )
        for s in (0, 2, 4):  # a whistle tune in quarter notes, with rests
            note = int(np.clip(note + rng.integers(-2, 3), 0, 13))
            if rng.random() < 0.7:
                f = _hz(root * 4, MAJOR[note % 7] + 12 * (note // 7))
                c["whistle"].add(
                    at(bar, s),
                    _memo(
                        notes, f, lambda: _tone(f, 1.9 * step, sr, [1, 0.2, 0.08], attack=0.04, vibrato=(0.006, 5.5))
                    ),
                )
    return [(c["guitar"].x, 0), (c["bass"].x, -6), (c["whistle"].x, -8), (c["shaker"].x, -12)]


def _hip_hop(rng, seconds, sr, root):
    at0, step, bars = _grid(seconds, rng.uniform(80, 96), rng, 16)
    swing = rng.uniform(0.1, 0.3) * step

    def at(bar, s):
        return at0(bar, s) + swing * (s % 2)  # late off-beat sixteenths

    kicks = [(0, 7, 10), (0, 3, 10), (0, 7, 8, 10)][rng.integers(3)]
    kick, snare, hat = _kick(sr, 90, 42, 0.25), _snare(sr, rng, 0.2), _hit(sr, rng, 0.025, -2)
    c = {k: _Canvas(seconds, sr) for k in ("kick", "snare", "hat", "sub", "stab", "vinyl")}
    sub = {r: _tone(_hz(root / 4, r), 0.8, sr, [1, 0.15], 0.5, glide=-0.05) for r in (0, 10, 7)}
    k = np.arange(1, 9)
    stab = sum(_tone(f, 2.2, sr, 1 / k**2, 0.6) for f in _hz(root, (0, 3, 7, 10)))  # dusty min7
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
    return [
        (c["kick"].x, 0),
        (c["snare"].x, -3),
        (c["hat"].x, -12),
        (c["sub"].x, -3),
        (c["stab"].x, -8),
        (c["vinyl"].x, -24),
    ]


def _instrumental(rng, seconds, sr, root):
    at, step, bars = _grid(seconds, rng.uniform(60, 76), rng, 8, per_beat=2)  # 4/4 in eighths
    c = {k: _Canvas(seconds, sr) for k in ("pad", "piano", "cello")}
    k = np.arange(1, 17)
    piano_decay, piano_ratios = 1.8 / (1 + 0.25 * k), k * np.sqrt(1 + 2e-4 * k**2)
    prog = ((0, 4, 7, 11), (9, 12, 16, 19), (5, 9, 12, 16), (7, 11, 14, 17))  # Imaj7 vi7 IVmaj7 V7
    notes: dict = {}
    dur = 16 * step + 0.8
    for bar in range(0, bars, 2):  # one chord per two bars, slow attack and release
        ch = prog[(bar // 2) % 4]
        c["pad"].add(
            at(bar, 0),
            _memo(
                notes,
                ch,
                lambda: sum(  # detuned voices beat slowly
                    _tone(f * d, dur, sr, 1 / np.arange(1, 9) ** 1.6, attack=0.6, vibrato=(0.003, 4.5))
                    for f in _hz(root, ch)
                    for d in (0.996, 1.004)
                ),
            ),
        )
        c["cello"].add(
            at(bar, 0),
            _memo(
                notes,
                ch[0],
                lambda: _tone(_hz(root / 2, ch[0]), dur, sr, 1 / np.arange(1, 11), attack=0.3, vibrato=(0.004, 5)),
            ),
        )
        for s in range(16):
            if rng.random() < 0.35:  # a sparse piano line
                semi = MAJOR[rng.integers(7)] + 12 * rng.integers(2)
                c["piano"].add(
                    at(bar, s),
                    _memo(
                        notes,
                        ("piano", semi),
                        lambda: _tone(_hz(root * 2, semi), 2.0, sr, 1 / k**1.3, piano_decay, 0.003, piano_ratios),
                    ),
                )
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
    tek = _tone(rng.uniform(350, 550), 0.5, sr, [1, 0.6, 0.5, 0.3, 0.2], 0.12, attack=0.001) + _hit(
        sr, rng, 0.005, 0, 0.5
    )
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
            c["sitar"].add(
                at(bar, s),
                _memo(
                    notes,
                    (f, dur, glide),
                    lambda: _tone(
                        f, dur * step, sr, 1 / k**0.8, 0.9 / (1 + 0.08 * k), 0.002, vibrato=(0.012, 6.5), glide=glide
                    ),
                ),
            )
            note, s = nxt, s + dur
    return [(c["drone"].x, -12), (c["sitar"].x, 0), (c["dum"].x, 0), (c["tek"].x, -2)]


def _voice(f0: float, dur: float, sr: int, vowel) -> np.ndarray:
    k = np.arange(1, int(4000 / f0) + 1)
    amps = sum(g * np.exp(-0.5 * ((k * f0 - fm) / 120) ** 2) for g, fm in zip((1, 0.5, 0.25), vowel)) + 0.02 / k
    return _tone(f0, dur, sr, amps, attack=0.06, vibrato=(0.015, 5.5))


def _pop(rng, seconds, sr, root):
    at, step, bars = _grid(seconds, rng.uniform(96, 122), rng, 16)
    kick, hat = _kick(sr, 130, 55, 0.12), _hit(sr, rng, 0.02, -2)
    gap = int(0.01 * sr)  # a clap: three bursts 10 ms apart
    clap = sum(np.pad(_hit(sr, rng, 0.03, -1, 0.25), (i * gap, (2 - i) * gap)) for i in range(3))
    c = {k: _Canvas(seconds, sr) for k in ("drums", "keys", "voice", "bass")}
    k = np.arange(1, 13)
    prog = ((0, 4, 7), (7, 11, 14), (9, 12, 16), (5, 9, 12))  # I V vi IV
    keys = {
        i: sum(_tone(f, 4 * step, sr, 1 / k**1.5, 0.5 / (1 + 0.2 * k)) for f in _hz(root * 2, ch))
        for i, ch in enumerate(prog)
    }
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
                c["bass"].add(
                    t, _memo(notes, ch[0], lambda: _tone(_hz(root / 2, ch[0]), 2 * step, sr, [1, 0.5, 0.25], 0.3))
                )
            if s % 4 == 0:
                c["keys"].add(t, keys[bar % 4])
        s = 0
        while s < 16:  # a sung line: pentatonic, one or two beats a note
            dur = 4 * int(rng.integers(1, 3))
            note = int(np.clip(note + rng.integers(-2, 3), 0, 9))
            f, vowel = _hz(root * 2, PENTATONIC[note % 5] + 12 * (note // 5)), int(rng.integers(4))
            c["voice"].add(at(bar, s), _memo(notes, (f, dur, vowel), lambda: _voice(f, dur * step, sr, VOWELS[vowel])))
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
                c["bass"].add(t, _memo(chug, ("bass", r), lambda: _tone(_hz(root / 4, r), 2 * step, sr, saw[:10], 0.3)))
            if s in (0, 6, 8):
                c["drums"].add(t, kick)
            if s in (4, 12):
                c["drums"].add(t, snare)
    return [(c["guitar"].x, 0), (c["drums"].x, -2), (c["cymbals"].x, -6), (c["bass"].x, -6)]


_GENRE_SYNTH = dict(
    zip(GENRES, (_electronic, _experimental, _folk, _hip_hop, _instrumental, _international, _pop, _rock))
)


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
        rms = np.sqrt(np.mean(x**2))
        if rms == 0:
            continue
        g = 10 ** ((level + rng.uniform(-4, 4)) / 20) / rms
        pan = (rng.uniform(-0.6, 0.6) + 1) * np.pi / 4
        gains = (np.cos(pan), np.sin(pan)) if channels == 2 else (np.sqrt(0.5),)
        for ch in range(channels):
            out[:, ch] += gains[ch] * g * x
    low = np.stack([_lowpass(out[:, ch], sr, fc) for ch in range(channels)], axis=1)
    out = low + shelf * (out - low)  # a random high shelf: brightness is no genre cue
    rms = np.sqrt(np.mean(out**2))
    alpha = rng.choice([-1.0, 0.0, 1.0, 2.0])  # noise colour: blue, white, pink, brown
    floor = 10 ** (rng.uniform(-45, -25) / 20) * rms
    out += floor * np.stack([_noise(n, rng, alpha) for _ in range(channels)], axis=1)
    out *= 10 ** (rng.uniform(-30, -14) / 20) / np.sqrt(np.mean(out**2))
    out *= min(1.0, 0.95 / np.abs(out).max())  # no clipping in the mp3
    fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.01 * sr))[:, None]
    out = (out * fade).astype(np.float32)
    return out[:, 0] if channels == 1 else out
