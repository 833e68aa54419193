"""The models' front ends: raw (B, N) waveform at the cache rate -> network input.

Every model owns its front end, so training, evaluation and prediction hand
all five architectures the same raw waveform batch and the features are
computed on the model's device (sota-music-tagging-models' habit). This module
holds every layer of that front end: the log-mel spectrogram (librosa parity),
resampling and the two z-scores. It runs wherever the model runs (the trial's
device), never in the data pipeline. In training a front end may be handed one
batch's SpecAugment-style masks (`Masks`, drawn by `mgc_ray.trial.recipe`), which it applies to its
network input: time and frequency on a spectrogram, time on a waveform.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
import torchaudio
from torch import nn

from mgc_ray.config import TOP_DB, WAVE_1D_SAMPLE_RATE, ModelConfig

AMIN = 1e-10  # librosa.power_to_db's default floor on power before the log
ZSCORE_EPS = 1e-5  # keeps a silent (constant) spectrogram at 0 instead of NaN


# --- SpecAugment-style masks (drawn by mgc_ray.trial.recipe, applied here) ---------
class Masks(NamedTuple):
    """One batch's masks as fractions of an axis, each (B,) float32 on the model's device.

    A mask covers positions [floor(start x L), floor(start x L) + floor(width x L)) of an axis
    of length L (`span`); width 0 masks nothing. The front ends call `time` and `freq`.
    """

    time_start: torch.Tensor
    time_width: torch.Tensor
    freq_start: torch.Tensor
    freq_width: torch.Tensor

    def time(self, x: torch.Tensor) -> torch.Tensor:
        """Zero each example's time mask on the last axis of (B, T) or (B, n_mels, T)."""
        hide = span(self.time_start, self.time_width, x.shape[-1])  # (B, T)
        return x.masked_fill(hide.view(x.shape[0], *[1] * (x.dim() - 2), x.shape[-1]), 0.0)

    def freq(self, x: torch.Tensor) -> torch.Tensor:
        """Zero each example's frequency mask on the mel axis of (B, n_mels, T)."""
        hide = span(self.freq_start, self.freq_width, x.shape[1])  # (B, n_mels)
        return x.masked_fill(hide[:, :, None], 0.0)  # (B, n_mels, T)


def span(start: torch.Tensor, width: torch.Tensor, length: int) -> torch.Tensor:
    """Which positions of an axis of `length` each example's mask covers.

    Args:
        start, width: (B,) fractions of the axis (`Masks`).

    Returns:
        (B, length) bool, True inside the mask; built on the device, no host read.
    """
    pos = torch.arange(length, device=start.device)  # (L,)
    lo = torch.floor(start * length)  # (B,)
    hi = lo + torch.floor(width * length)  # (B,)
    return (pos >= lo[:, None]) & (pos < hi[:, None])  # (B, L)


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
        fb = torchaudio.functional.melscale_fbanks(
            self.window // 2 + 1,
            0.0,
            self.sample_rate / 2,
            self.n_mels,
            self.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )  # (F, n_mels)
        self.register_buffer("mel_fb", fb.T.contiguous(), persistent=False)  # (n_mels, F)
        self._fb_csr: torch.Tensor | None = None  # CSR copy of mel_fb for the CPU, built on first use

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Args: wave (B, N) float. Returns: (B, n_mels, T) dB in [-top_db, 0], T = 1 + N // hop."""
        if wave.dim() != 2:
            raise ValueError(f"LogMel expects (B, N) waveforms, got shape {tuple(wave.shape)}")
        # float32 even under autocast: powers reach ~1e6 (window sum ~ window / 2), past float16's 65,504
        with torch.autocast(device_type=wave.device.type, enabled=False):
            spec = torch.stft(
                wave.float(),
                n_fft=self.window,
                hop_length=self.hop,
                win_length=self.window,
                window=self.hann,
                center=True,
                pad_mode="constant",
                return_complex=True,
            )  # (B, F, T)
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
        return (
            f"sample_rate={self.sample_rate}, window={self.window}, hop={self.hop}, "
            f"n_mels={self.n_mels}, top_db={self.top_db}"
        )


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
        """Args: wave (..., N). Returns: (..., ceil(N * new / orig)), float32 even under autocast."""
        if self.orig_freq == self.new_freq:
            return wave.float()
        with torch.autocast(device_type=wave.device.type, enabled=False):  # fp32, like the 2D front end
            return apply_sinc_kernel(
                wave.float(), self.kernel, self.width, self.orig_freq // self.gcd, self.new_freq // self.gcd
            )

    def noise_gain(self) -> float:
        """The factor by which this resampling scales white noise's standard deviation.

        A white input of variance s^2 leaves output phase p with variance s^2 * sum(kernel[p]^2);
        the phases are equally frequent. 22,050 -> 16,000 Hz keeps the band below ~7.9 kHz of
        the 11 kHz one: about 0.85 (so noise added at the cache rate reaches the 1D network weaker).
        """
        if self.orig_freq == self.new_freq:
            return 1.0
        return float(self.kernel.double().square().sum(dim=(1, 2)).mean().sqrt())


def apply_sinc_kernel(
    wave: torch.Tensor, kernel: torch.Tensor, width: int, orig: int, new: int, out_len: int | None = None
) -> torch.Tensor:
    """torchaudio's windowed-sinc resampling with a prebuilt kernel, without host reads.

    torchaudio's own `_apply_sinc_resample_kernel` slices with a 0-d tensor (a host read per
    call); here every length is a Python int. Same output as `torchaudio.functional.resample`.

    Args:
        wave: (B, N) float.
        kernel: (new, 1, K) from `torchaudio.transforms.Resample(orig, new).kernel` (reduced rates).
        width: that transform's `width`.
        orig, new: the rates divided by their gcd.
        out_len: keep only the first `out_len` outputs (input past what they read is not convolved).

    Returns:
        (B, min(ceil(N * new / orig), out_len)) float.
    """
    b, n = wave.shape
    target = -(-n * new // orig)  # ceil(n * new / orig), exact in integers
    if out_len is not None and out_len < target:
        target = out_len
        keep = -(-target * orig // new) + width + orig  # the last input sample the kept outputs read
        wave = wave[:, : min(n, keep)]
    x = torch.nn.functional.pad(wave, (width, width + orig))  # (B, N' + 2 width + orig)
    y = torch.nn.functional.conv1d(x[:, None], kernel, stride=orig)  # (B, new, frames)
    return y.transpose(1, 2).reshape(b, -1)[:, :target]  # (B, target)


def n_frames(n_samples: int, window: int) -> int:
    """Centred STFT frames for hop = window // 2: 1 + n_samples // hop (220,500 / 1976 -> 224)."""
    return 1 + n_samples // (window // 2)


def resampled_length(n_samples: int, orig_freq: int, new_freq: int) -> int:
    """Samples after resampling (torchaudio's rule): ceil(n * new / orig); 220,500 -> 160,000."""
    g = math.gcd(int(orig_freq), int(new_freq))
    return math.ceil(n_samples * (new_freq // g) / (orig_freq // g))


# --- the models' front ends ----------------------------------------------------
class FrontEnd(nn.Module):
    """Base class: `output_shape(n_samples)` gives the network input shape without the batch axis."""

    def output_shape(self, n_samples: int) -> tuple[int, ...]:
        raise NotImplementedError


class SpectrogramFrontEnd(FrontEnd):
    """The paper's 2D input: log-mel in dB relative to the maximum, z-scored per input.

    Args:
        config: uses sample_rate, window (hop = window // 2) and n_mels.

    Shapes: (B, N) -> (B, 1, n_mels, 1 + N // hop); 220,500 samples give
    (B, 1, 513, 128) at window 3472 and (B, 1, 224, 224) at window 1976.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.logmel = LogMel(config.sample_rate, config.window, config.n_mels)
        self.norm = PerInputZScore()

    def forward(self, wave: torch.Tensor, masks: Masks | None = None) -> torch.Tensor:
        """Args: wave (B, N); masks: training only, one time and one mel band per example, zeroed
        after the z-score (0 is the example's mean)."""
        x = self.logmel(wave)  # (B, n_mels, T) dB
        x = self.norm(x)  # (B, n_mels, T), each example mean 0 std 1
        if masks is not None:
            x = masks.freq(masks.time(x))  # (B, n_mels, T), a time span and a mel band at 0
        return x.unsqueeze(1)  # (B, 1, n_mels, T)

    def output_shape(self, n_samples: int) -> tuple[int, ...]:
        return (1, self.logmel.n_mels, n_frames(n_samples, self.logmel.window))


class WaveformFrontEnd(FrontEnd):
    """The paper's 1D input: 16 kHz waveform, z-scored with the training set's statistics.

    Args:
        config: uses sample_rate (resampled from) and wave_mean / wave_std
            (statistics of the cache-rate training waveforms; band-limiting to
            8 kHz changes them by well under 1 % for music, so they are applied
            after resampling, as the paper normalises the 16 kHz waveform).
        target_rate: the 1D branch's rate (the paper's 16,000 Hz).

    Shapes: (B, N) -> (B, 1, N * 16000 / sample_rate); 220,500 samples at
    22,050 Hz give (B, 1, 160000).
    """

    def __init__(self, config: ModelConfig, target_rate: int = WAVE_1D_SAMPLE_RATE) -> None:
        super().__init__()
        self.resample = Resample(config.sample_rate, target_rate)
        self.norm = WaveZScore(config.wave_mean, config.wave_std)

    def forward(self, wave: torch.Tensor, masks: Masks | None = None) -> torch.Tensor:
        """Args: wave (B, N); masks: training only, one time span per example zeroed at 16 kHz
        (a waveform has no frequency axis)."""
        with torch.autocast(device_type=wave.device.type, enabled=False):  # fp32 under autocast, like LogMel
            x = self.resample(wave)  # (B, N16)
            x = self.norm(x)  # (B, N16)
            if masks is not None:
                x = masks.time(x)  # (B, N16), a time span at 0
        return x.unsqueeze(1)  # (B, 1, N16)

    def output_shape(self, n_samples: int) -> tuple[int, ...]:
        return (1, resampled_length(n_samples, self.resample.orig_freq, self.resample.new_freq))


def input_shapes(model: nn.Module, n_samples: int) -> list[tuple[int, ...]]:
    """The network input shape(s) (no batch axis) of every front end in `model`, in module order.

    Args:
        model: any registered model (fusion has two front ends: 1D then 2D).
        n_samples: waveform length at the model's sample rate.

    Returns:
        one shape per front end, e.g. [(1, 513, 128)] or [(1, 160000), (1, 224, 224)].
    """
    return [m.output_shape(n_samples) for m in model.modules() if isinstance(m, FrontEnd)]
