"""Torch front ends, normalisation, crops and the paper's augmentation.

Where each step runs, and why:

- Crops (`random_crop`, `centre_crop`, `cover_crops`) run in the Ray Data
  pipeline on CPU, per track and per epoch, on the cached int16 waveform:
  only the 10-s crop (not the 30-s clip) is shipped to the trial, and a new
  random crop every epoch is the paper's first augmentation.
- `Augment` (Gaussian noise, time stretch) runs in the trial on the trial's
  device on a whole training batch: it is cheap tensor work next to a
  training step (~0.1 s per batch of 32 even on 2 CPU cores), it needs no
  numpy, and it is seedable with a `torch.Generator`. Evaluation and
  prediction never call it.
- `LogMel`, `Resample`, `PerInputZScore` and `WaveZScore` live inside each
  model (see `mgc_ray.models.frontend`), so training, evaluation and
  prediction all hand the model the same raw (B, N) waveform batch at the
  cache rate and the features are computed on the model's device.

Everything here is plain torch (crops also take numpy arrays); nothing runs at
import time.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
import torchaudio
from torch import nn

from mgc_ray.config import NOISE_MAX_REL, NOISE_P, STRETCH_P, STRETCH_RANGE, TOP_DB

AMIN = 1e-10  # librosa.power_to_db's default floor on power before the log
ZSCORE_EPS = 1e-5  # keeps a silent (constant) spectrogram at 0 instead of NaN


# --- log-mel -----------------------------------------------------------------
class LogMel(nn.Module):
    """Log-mel spectrogram in dB relative to each example's maximum.

    Matches `librosa.feature.melspectrogram(y, sr, n_fft=window,
    hop_length=window // 2, win_length=window, window="hann", center=True,
    pad_mode="constant", power=2.0, n_mels)` followed by
    `librosa.power_to_db(S, ref=np.max, amin=1e-10, top_db=80)` (librosa 0.11's
    defaults: zero padding of window // 2 at both ends, periodic Hann window,
    Slaney mel scale with Slaney area normalisation, fmin 0, fmax sr / 2),
    batched and in float32: against librosa on a real FMA clip and a synthetic
    one at windows 3472 / 1976 / 1024 the largest difference is < 0.01 dB
    (tests demand median < 0.05 dB, max < 1 dB), so no float64 STFT is needed
    (float32 rounding sits far below the 80-dB floor).

    Args:
        sample_rate: rate of the incoming waveform (Hz).
        window: STFT window length = n_fft in samples; hop = window // 2 (50 % overlap).
        n_mels: number of mel bands.
        top_db: dynamic range kept below each example's maximum (dB).
    """

    def __init__(self, sample_rate: int, window: int, n_mels: int, top_db: float = TOP_DB) -> None:
        super().__init__()
        if window < 2 or n_mels < 1:
            raise ValueError(f"window must be >= 2 and n_mels >= 1, got {window} and {n_mels}")
        self.sample_rate, self.window, self.n_mels = int(sample_rate), int(window), int(n_mels)
        self.top_db = float(top_db)
        self.hop = self.window // 2  # 50 % overlap, the paper's
        # Built once here, not per forward; non-persistent: they follow from the config.
        # librosa's "hann" window is the periodic one
        self.register_buffer("hann", torch.hann_window(self.window, periodic=True), persistent=False)
        fb = torchaudio.functional.melscale_fbanks(self.window // 2 + 1, 0.0, self.sample_rate / 2, self.n_mels,
                                                   self.sample_rate, norm="slaney", mel_scale="slaney")  # (F, n_mels)
        self.register_buffer("mel_fb", fb.T.contiguous(), persistent=False)  # (n_mels, F)
        self._fb_csr: torch.Tensor | None = None  # CSR copy of mel_fb for the CPU, built on first use

    def n_frames(self, n_samples: int) -> int:
        """Frames for a waveform of `n_samples` (centred frames): 1 + n_samples // hop."""
        return 1 + n_samples // self.hop

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Args: wave (B, N) float. Returns: (B, n_mels, T) dB in [-top_db, 0], T = 1 + N // hop."""
        if wave.dim() != 2:
            raise ValueError(f"LogMel expects (B, N) waveforms, got shape {tuple(wave.shape)}")
        # float32 even under autocast: powers reach ~1e6 (window sum ~ window / 2), past float16's 65,504
        with torch.autocast(device_type=wave.device.type, enabled=False):
            spec = torch.stft(wave.float(), n_fft=self.window, hop_length=self.hop, win_length=self.window,
                              window=self.hann, center=True, pad_mode="constant", return_complex=True)  # (B, F, T)
            power = spec.real.square() + spec.imag.square()  # (B, F, T)
            mel = self._project(power)  # (B, n_mels, T)
        db = 10.0 * torch.log10(mel.clamp_min(AMIN))  # (B, n_mels, T)
        ref = db.amax(dim=(1, 2), keepdim=True)  # (B, 1, 1): ref=np.max, per example (log is monotone)
        db = db - ref  # (B, n_mels, T), max 0 dB
        return db.clamp_min(-self.top_db)  # (B, n_mels, T)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fb_csr": None}  # copy.deepcopy cannot copy a CSR tensor: rebuilt on first use

    def _project(self, power: torch.Tensor) -> torch.Tensor:
        """(B, F, T) power -> (B, n_mels, T) mel power.

        The Slaney filterbank has ~2 non-zeros per FFT bin (0.9 % of 224 x 989), so
        on the CPU a sparse (CSR) product is up to a third faster than the dense
        one with the same output (FINDINGS.md, bug 2); on CUDA cuBLAS's dense
        matmul is the fast one.
        """
        if power.device.type != "cpu":
            return torch.matmul(self.mel_fb, power)  # (B, n_mels, T)
        if self._fb_csr is None or self._fb_csr.dtype != self.mel_fb.dtype:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta": once per module
                self._fb_csr = self.mel_fb.cpu().to_sparse_csr()  # (n_mels, F)
        b, f, t = power.shape
        mel = torch.sparse.mm(self._fb_csr, power.permute(1, 0, 2).reshape(f, b * t))  # (n_mels, B * T)
        return mel.reshape(-1, b, t).permute(1, 0, 2)  # (B, n_mels, T)

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, window={self.window}, hop={self.hop}, "
                f"n_mels={self.n_mels}, top_db={self.top_db}")


# --- normalisation and resampling --------------------------------------------
class PerInputZScore(nn.Module):
    """z-score each example over all its non-batch values (the paper's 2D normalisation).

    Args:
        eps: added to the standard deviation so a constant input maps to 0.
    """

    def __init__(self, eps: float = ZSCORE_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, ...). Returns: same shape, each example with mean 0 and std ~1."""
        dims = tuple(range(1, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)  # (B, 1, ...)
        std = x.std(dim=dims, keepdim=True, unbiased=False)  # (B, 1, ...)
        return (x - mean) / (std + self.eps)


class WaveZScore(nn.Module):
    """z-score with fixed statistics (the training set's, the paper's 1D normalisation).

    Args:
        mean: training-set waveform mean (`ModelConfig.wave_mean`).
        std: training-set waveform standard deviation (`ModelConfig.wave_std`), > 0.
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"wave_std must be > 0, got {std}")
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean:.6g}, std={self.std:.6g}"


class Resample(torchaudio.transforms.Resample):
    """Band-limited (windowed sinc) resampling with the kernel built once at construction.

    torchaudio's transform, but its kernel buffer is not saved in state dicts
    (it follows from the two rates), so checkpoints stay small and independent
    of torchaudio's kernel details. Identity when the rates are equal.
    22,050 -> 16,000 Hz maps 220,500 samples to exactly 160,000.

    Args:
        orig_freq: incoming rate (Hz).
        new_freq: outgoing rate (Hz).
    """

    def __init__(self, orig_freq: int, new_freq: int) -> None:
        super().__init__(int(orig_freq), int(new_freq))
        if "kernel" in self._buffers:
            kernel = self._buffers.pop("kernel")
            self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Args: wave (..., N). Returns: (..., ceil(N * new / orig))."""
        return super().forward(wave.float())


# --- crops (CPU, in the data pipeline) ---------------------------------------
def _pad_end(x, length: int):
    """Zero-pad the last axis of a numpy array or torch tensor at its end to `length`."""
    n = x.shape[-1]
    if n >= length:
        return x
    if isinstance(x, torch.Tensor):
        return torch.nn.functional.pad(x, (0, length - n))
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, length - n)])


def random_crop(x, crop_len: int, rng: np.random.Generator):
    """A uniformly placed crop of `crop_len` samples along the last axis.

    A track shorter than the crop is returned whole, zero-padded at its end
    (the audio starts at sample 0 of the crop, as it does in `centre_crop`).

    Args:
        x: (..., N) numpy array (int16 or float) or torch tensor.
        crop_len: samples in the crop.
        rng: numpy Generator (the data pipeline's, seeded per epoch).

    Returns:
        (..., crop_len), same type and dtype as `x`.
    """
    n = x.shape[-1]
    if n <= crop_len:
        return _pad_end(x, crop_len)
    start = int(rng.integers(0, n - crop_len + 1))
    return x[..., start:start + crop_len]


def centre_crop(x, crop_len: int):
    """The middle `crop_len` samples (validation crops); shorter tracks are zero-padded at the end.

    Args:
        x: (..., N) numpy array or torch tensor.
        crop_len: samples in the crop.

    Returns:
        (..., crop_len), same type and dtype as `x`.
    """
    n = x.shape[-1]
    if n <= crop_len:
        return _pad_end(x, crop_len)
    start = (n - crop_len) // 2
    return x[..., start:start + crop_len]


def cover_crops(x, crop_len: int, hop: int | None = None):
    """Crops that together cover the whole clip, for track-level scores.

    Crops start at 0, hop, 2 hop, ...; the last one is aligned to the end of
    the clip (so it may overlap its neighbour). A clip no longer than the crop
    gives one crop, zero-padded at the end. A 30-s clip with 10-s crops gives 3.

    Args:
        x: (N,) numpy array or torch tensor.
        crop_len: samples per crop.
        hop: distance between crop starts (default crop_len: no overlap but the last).

    Returns:
        (n, crop_len) with n = 1 + ceil((N - crop_len) / hop), same type and dtype as `x`.
    """
    hop = crop_len if hop is None else int(hop)
    if hop < 1:
        raise ValueError(f"hop must be >= 1, got {hop}")
    n = x.shape[-1]
    if n <= crop_len:
        crops = [_pad_end(x, crop_len)]
    else:
        starts = list(range(0, n - crop_len, hop)) + [n - crop_len]
        crops = [x[..., s:s + crop_len] for s in starts]
    return torch.stack(crops) if isinstance(x, torch.Tensor) else np.stack(crops)


# --- augmentation (trial device, per training batch) -------------------------
class Augment(nn.Module):
    """The paper's training augmentation on a (B, N) waveform batch, independent per example.

    1. Time stretch with probability `stretch_p`: the crop is resampled by a
       factor r ~ U(0.9, 1.1), quantised to 1/100 (output sample j reads input
       position j * r, so r > 1 plays faster and higher). Given `out_len`, the
       input is a longer window (`input_len(out_len)` samples: enough audio for
       the largest factor) and every example is cut to `out_len` after the
       stretch, so a stretched crop of a long track is audio to its last sample
       (an unstretched one is the window's first `out_len` samples); a track
       shorter than the window arrives zero-padded, as before. Without
       `out_len` the output keeps the input's length and r > 1 runs past its
       end into zeros.
       `stretch_method="sinc"` (default) resamples each stretched example with
       torchaudio's band-limited windowed-sinc resampler (rate round(100 r) /
       100); `"linear"` does the whole batch in one gather by linear
       interpolation. Measured on 2 CPU cores (results/model_table.md): the
       per-example sinc loop is no slower than the batched gather (about 0.1 s
       each for a batch of 32 x 220,500 samples), and linear interpolation
       attenuates and images the top of the spectrum (2-3 dB median log-mel
       error in the top 20 of 224 bands against sinc, < 0.1 dB below), so sinc
       is the default; "linear" stays for devices where a loop of small
       per-example kernels is slow (not measured on a GPU yet).
    2. Gaussian noise with probability `noise_p`: noise ~ N(0, a^2) with the
       amplitude a (the noise's standard deviation) ~ U(0, noise_max_rel * max|x|),
       max|x| taken per example on the (stretched) waveform. So the noise's std
       stays below 3 % of the example's maximum amplitude, the paper's bound.

    Noise is added after the stretch so the added noise is white with exactly
    that std. No numpy: runs on whatever device `wave` is on; the same
    generator seed gives the same output on the same device.

    Args:
        noise_p: probability of adding noise to an example.
        noise_max_rel: upper bound of the noise std relative to the example's max |x|.
        stretch_p: probability of stretching an example.
        stretch_range: (low, high) of the uniform stretch factor.
        stretch_method: "sinc" (torchaudio, per example) or "linear" (batched gather).
    """

    # Stretch factors are multiples of 1/100: the sinc resampler needs a rational rate, and builds one
    # kernel per phase of the reduced ratio. On a 1/1000 grid 937/1000 built a (1000, 1, 951) kernel,
    # > 98 % zeros; 1/100 keeps <= 100 phases and 21 factors on [0.9, 1.1]: 3.3x faster per batch
    # (results/benchmarks/FINDINGS.md, bug 1).
    RATE_STEPS = 100
    # Input samples beyond out_len * max factor: the windowed-sinc kernel reads ~7 input samples
    # past its centre at these ratios (lowpass_filter_width 6 at rolloff 0.99); 64 is ample.
    STRETCH_MARGIN = 64

    def __init__(self, noise_p: float = NOISE_P, noise_max_rel: float = NOISE_MAX_REL,
                 stretch_p: float = STRETCH_P, stretch_range: Sequence[float] = STRETCH_RANGE,
                 stretch_method: str = "sinc") -> None:
        super().__init__()
        lo, hi = (float(v) for v in stretch_range)
        if not (0 <= noise_p <= 1 and 0 <= stretch_p <= 1 and noise_max_rel >= 0 and 0 < lo <= hi):
            raise ValueError("Augment: probabilities in [0, 1], noise_max_rel >= 0, 0 < stretch low <= high")
        if stretch_method not in ("sinc", "linear"):
            raise ValueError(f"stretch_method must be 'sinc' or 'linear', got {stretch_method!r}")
        self.noise_p, self.noise_max_rel, self.stretch_p = float(noise_p), float(noise_max_rel), float(stretch_p)
        self.stretch_range = (lo, hi)
        self.stretch_method = stretch_method

    def input_len(self, out_len: int) -> int:
        """Samples to hand `forward(..., out_len=out_len)`: enough audio for the largest stretch factor."""
        return int(math.ceil(out_len * max(1.0, self.stretch_range[1]))) + self.STRETCH_MARGIN

    def sample_params(self, batch: int, device: torch.device | str,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Draw each example's augmentation.

        Args:
            batch: number of examples.
            device: where to draw (the generator's device when one is given).
            generator: torch.Generator for reproducible draws (None: torch's global RNG).

        Returns:
            dict of (B,) tensors: `stretch` (bool), `rate` (factor, a multiple of
            1/100; 1 where not stretched), `noise` (bool), `noise_rel` (noise
            std / max|x|, 0 where no noise).
        """
        if generator is not None:
            device = generator.device
        u = torch.rand(4, batch, generator=generator, device=device, dtype=torch.float64)  # (4, B): all draws at once
        lo, hi = self.stretch_range
        stretch = u[0] < self.stretch_p  # (B,)
        noise = u[2] < self.noise_p  # (B,)
        rate = torch.round((lo + (hi - lo) * u[1]) * self.RATE_STEPS) / self.RATE_STEPS  # (B,)
        rate = torch.where(stretch, rate, torch.ones_like(rate))  # (B,)
        noise_rel = torch.where(noise, self.noise_max_rel * u[3], torch.zeros_like(u[3]))  # (B,)
        return {"stretch": stretch, "rate": rate, "noise": noise, "noise_rel": noise_rel.float()}

    @staticmethod
    def stretch_linear(wave: torch.Tensor, rate: torch.Tensor, out_len: int | None = None) -> torch.Tensor:
        """Resample each example by its own factor (linear interpolation).

        Args:
            wave: (B, N) float.
            rate: (B,) factors; output sample j = input at position j * rate (zero past the end).
            out_len: output samples (default N).

        Returns:
            (B, out_len) float.
        """
        b, n = wave.shape
        pos = torch.arange(out_len or n, device=wave.device, dtype=torch.float64)[None, :] * rate.double()[:, None]  # (B, N)
        i0 = pos.floor().long()  # (B, out_len), float64 keeps j * rate exact at N ~ 2e5
        frac = (pos - i0).to(wave.dtype)  # (B, out_len)
        padded = torch.nn.functional.pad(wave, (0, 2))  # (B, N + 2): zeros past the end
        i0 = i0.clamp_max(n)  # (B, out_len): positions past the end read the zero padding
        x0 = padded.gather(1, i0)  # (B, out_len)
        x1 = padded.gather(1, i0 + 1)  # (B, out_len)
        return x0 + frac * (x1 - x0)  # (B, out_len)

    @classmethod
    def stretch_sinc(cls, wave: torch.Tensor, rate: torch.Tensor, out_len: int | None = None) -> torch.Tensor:
        """Band-limited resampling of each example by its own factor, then cut (or zero-padded) to `out_len`.

        Args:
            wave: (B, N) float.
            rate: (B,) factors, multiples of 1/RATE_STEPS; 1 leaves an example as is.
            out_len: output samples (default N).

        Returns:
            (B, out_len) float.
        """
        n = out_len or wave.shape[1]
        out = _pad_end(wave[:, :n], n).clone()  # (B, out_len): the unstretched examples' first samples
        for i, r in enumerate(rate.tolist()):
            orig = int(round(r * cls.RATE_STEPS))
            if orig == cls.RATE_STEPS:
                continue
            # only the input the output reads (n * r samples, and the kernel's margin): a 0.9 stretch of a
            # window made for 1.1 costs no more than before
            src = wave[i:i + 1, :int(math.ceil(n * r)) + cls.STRETCH_MARGIN]  # (1, <= N)
            y = torchaudio.functional.resample(src, orig, cls.RATE_STEPS)  # (1, ~len(src) / r)
            y = _pad_end(y[:, :n], n)  # (1, out_len): cut, or zero-pad a short track's end
            out[i] = y[0]
        return out

    def apply(self, wave: torch.Tensor, params: dict[str, torch.Tensor],
              generator: torch.Generator | None = None, out_len: int | None = None) -> torch.Tensor:
        """Apply drawn params (see `sample_params`) to a (B, N) batch; returns (B, out_len or N) float32."""
        out = wave.float()
        n = out_len or out.shape[1]
        if bool(params["stretch"].any()):
            if self.stretch_method == "sinc":
                out = self.stretch_sinc(out, params["rate"], n)  # (B, n)
            else:
                stretched = self.stretch_linear(out, params["rate"], n)  # (B, n)
                out = torch.where(params["stretch"][:, None], stretched, _pad_end(out[:, :n], n))  # (B, n)
        else:
            out = _pad_end(out[:, :n], n)  # (B, n)
        if bool(params["noise"].any()):
            peak = out.abs().amax(dim=1)  # (B,)
            std = params["noise_rel"] * peak  # (B,)
            noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)  # (B, N)
            out = out + std[:, None] * noise  # (B, N); std is 0 where no noise was drawn
        return out

    def forward(self, wave: torch.Tensor, generator: torch.Generator | None = None,
                out_len: int | None = None) -> torch.Tensor:
        """Augment a training batch.

        Args:
            wave: (B, N) float waveforms on the trial's device (N = `input_len(out_len)` for stretch
                without trailing silence).
            generator: torch.Generator on the same device (None: global RNG).
            out_len: samples per output example (default N).

        Returns:
            (B, out_len or N) float32 augmented waveforms.
        """
        if wave.dim() != 2:
            raise ValueError(f"Augment expects (B, N) waveforms, got shape {tuple(wave.shape)}")
        params = self.sample_params(wave.shape[0], wave.device, generator)
        return self.apply(wave, params, generator, out_len)

    def extra_repr(self) -> str:
        return (f"noise_p={self.noise_p}, noise_max_rel={self.noise_max_rel}, stretch_p={self.stretch_p}, "
                f"stretch_range={self.stretch_range}, stretch_method={self.stretch_method!r}")


def n_frames(n_samples: int, window: int) -> int:
    """Centred STFT frames for hop = window // 2: 1 + n_samples // hop (220,500 / 1976 -> 224)."""
    return 1 + n_samples // (window // 2)


def resampled_length(n_samples: int, orig_freq: int, new_freq: int) -> int:
    """Samples after resampling (torchaudio's rule): ceil(n * new / orig); 220,500 -> 160,000."""
    g = math.gcd(int(orig_freq), int(new_freq))
    return math.ceil(n_samples * (new_freq // g) / (orig_freq // g))
