"""Frozen configs, the one home of defaults, and the paper's presets.

Every number that the paper fixes lives here with its reason. Code below the
CLI reads these dataclasses, never Tune's flat config dict (STYLE habit 1).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

# --- the paper's constants -------------------------------------------------
CACHE_SAMPLE_RATE = 22_050  # the paper's 2D frame counts (128, 224) only work out at 22,050 Hz
WAVE_1D_SAMPLE_RATE = 16_000  # the paper's 1D input: 16 kHz mono
N_CLASSES = 8  # fma_small's 8 top-level genres
CROP_SECONDS = 10.0  # the paper's random 10-s crop
TOP_DB = 80.0  # librosa.power_to_db's default floor
NOISE_P = 0.5  # Gaussian noise on half the training examples
NOISE_MAX_REL = 0.03  # noise amplitude uniform below 3 % of the clip's max
STRETCH_P = 0.5  # time stretch on half the training examples
STRETCH_RANGE = (0.9, 1.1)  # resampling factor, uniform
PAPER_EPOCHS = 20  # keep the epoch with the lowest validation loss
PAPER_SPLIT = (0.8, 0.1, 0.1)  # shuffled train/val/test

# --- the cache ---------------------------------------------------------------
CACHE_SCHEMA_VERSION = 4  # bump when the shard or manifest layout changes (2: data_seed, 3: checksums, 4: shards in a seeded genre-mixed order)
MIN_TRACK_SECONDS = 2.0  # shorter decoded audio is "too short" (bad); longer but < crop is padded
SILENCE_PEAK = 1e-4  # a track whose peak |x| stays below this (-80 dBFS) is "silent" (bad)
TRACKS_PER_SHARD = 64  # ~64 x 30 s x 22,050 x 2 B = 85 MB per shard at FMA size
SPLITS = ("train", "val", "test")

# Training-recipe options a search may turn on (TrainConfig fields; mgc_ray.trial.recipe applies them), each at
# its "off" value here: the paper uses none of them. A run recorded before they existed trained with them off.
RECIPE_OFF = {
    "spec_mask": 0.0,  # SpecAugment-style masks: widths up to this fraction of the time / mel axis
    "mixup": 0.0,  # mixup's Beta(alpha, alpha): alpha
    "label_smoothing": 0.0,  # torch's CrossEntropyLoss label_smoothing
}
MASK_SHARE_MAX = 0.5  # a mask of half an axis or more hides more than it keeps: spec_mask < 0.5

# The hyperparameters a search may vary (TrainConfig fields); every other module
# (search spaces, MLflow params, the leaderboard, compare) takes this list from here.
SEARCHED = ("lr", "weight_decay", "batch_size", "window", "n_mels", "crop_seconds", *RECIPE_OFF)

# The metric every search ranks trials by: each trial's lowest validation loss so far, the
# paper's rule for choosing an epoch, applied to choosing a trial too; VAL_LOSS is the epoch's own.
METRIC, MODE = "best/val_loss", "min"
VAL_LOSS = "val/loss"

# Where the built-in demo dataset and its cache live when no data is given.
DEFAULT_HOME = "~/.cache/mgc_ray"
HOME_ENV = "MGC_HOME"  # overrides DEFAULT_HOME (tests and CI point it at a temp folder)
FMA_ROOT_ENV = "MGC_FMA_ROOT"  # environment variable naming an FMA root


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's random draws (crop order, crops, augmentation) in a trial.

    A restarted trial re-runs an epoch with exactly the draws it had, and no two
    (seed, epoch) pairs share a stream: 100,003 is a prime larger than any epoch
    count, so seed * 100,003 + epoch is distinct for every epoch < 100,003.
    """
    return int(seed) * 100_003 + int(epoch)


def home() -> Path:
    """Where the demo dataset, caches and default Tune output go ($MGC_HOME or DEFAULT_HOME)."""
    return Path(os.environ.get(HOME_ENV) or os.path.expanduser(DEFAULT_HOME))


def ray_address(explicit: str | None) -> str | None:
    """The Ray cluster to join (--address, else $RAY_ADDRESS), or None for a Ray of this command's own."""
    address = explicit or os.environ.get("RAY_ADDRESS")
    return None if address in (None, "", "local") else address


def experiment_path(storage: str, name: str) -> str:
    """Tune's folder of a search: `storage/name`, for a local folder or a URI alike."""
    return f"{storage.rstrip('/')}/{name}"


@dataclass(frozen=True)
class ModelConfig:
    """Everything a model needs to be rebuilt; stored in every checkpoint.

    Args:
        arch: a name from `mgc_ray.models.list_models()`.
        n_classes: output logits.
        sample_rate: rate of the waveform the model receives (the cache rate).
        window: STFT window = n_fft (samples at `sample_rate`); hop = window // 2.
        n_mels: mel bands of the 2D front end.
        crop_seconds: crop length the model was trained on (predict slides this window).
        wave_mean, wave_std: training-set waveform statistics for the 1D z-score.
        pretrained_path: optional local torchvision DenseNet-121 state dict.
    """

    arch: str
    n_classes: int = N_CLASSES
    sample_rate: int = CACHE_SAMPLE_RATE
    window: int = 1976
    n_mels: int = 224
    crop_seconds: float = CROP_SECONDS
    wave_mean: float = 0.0
    wave_std: float = 1.0
    pretrained_path: str | None = None

    @property
    def crop_samples(self) -> int:
        return int(round(self.crop_seconds * self.sample_rate))


def check_recipe(spec_mask: float, mixup: float, label_smoothing: float) -> None:
    """The recipe options' bounds (TrainConfig's, and so a search space's).

    Raises:
        ValueError: a value out of bounds, named with its bounds.
    """
    if not 0 <= spec_mask < MASK_SHARE_MAX:
        raise ValueError(f"spec_mask must be in [0, {MASK_SHARE_MAX:g}) (a fraction of the axis), got {spec_mask}")
    if not mixup >= 0:
        raise ValueError(f"mixup must be >= 0 (Beta's alpha; 0 is off), got {mixup}")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")


@dataclass(frozen=True)
class TrainConfig:
    """One trial's hyperparameters; Tune's flat dict becomes this at trial entry."""

    arch: str
    lr: float = 1e-4  # the paper's Adam learning rate
    weight_decay: float = 1e-4  # the paper's
    batch_size: int = 32  # the paper's for 2D
    window: int = 1976
    n_mels: int = 224
    crop_seconds: float = CROP_SECONDS
    max_epochs: int = PAPER_EPOCHS
    seed: int = 0
    spec_mask: float = RECIPE_OFF["spec_mask"]  # off, as in the paper's recipe: no masking,
    mixup: float = RECIPE_OFF["mixup"]  # no mixup
    label_smoothing: float = RECIPE_OFF["label_smoothing"]  # and hard targets
    augment: bool = True
    compile: bool = False  # torch.compile the model (tune.py --compile); not searched

    def __post_init__(self) -> None:
        check_recipe(self.spec_mask, self.mixup, self.label_smoothing)
        if not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.window < 16 or self.n_mels < 1 or self.crop_seconds <= 0:
            raise ValueError("window, n_mels and crop_seconds must be positive")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build from Tune's flat dict, ignoring keys that are not fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("batch_size", "window", "n_mels", "max_epochs", "seed"):
            if k in kw:
                kw[k] = int(kw[k])
        for k in ("lr", "weight_decay", "crop_seconds", *RECIPE_OFF):
            if k in kw:
                kw[k] = float(kw[k])
        return cls(**kw)

    def model_config(
        self, sample_rate: int, wave_mean: float = 0.0, wave_std: float = 1.0, n_classes: int = N_CLASSES
    ) -> ModelConfig:
        return ModelConfig(
            arch=self.arch,
            n_classes=n_classes,
            sample_rate=sample_rate,
            window=self.window,
            n_mels=self.n_mels,
            crop_seconds=self.crop_seconds,
            wave_mean=wave_mean,
            wave_std=wave_std,
        )


@dataclass(frozen=True)
class PaperPreset:
    """The paper's exact settings for one architecture: the one home of them.

    Search spaces start from `point()` unless a file names other first settings,
    and a trial is "the paper trial" exactly when `is_paper_point` says so.
    """

    arch: str
    label: str  # the row name in the paper's Table 1
    batch_size: int
    window: int
    n_mels: int
    lr: float = 1e-4
    weight_decay: float = 1e-4
    crop_seconds: float = CROP_SECONDS
    spec_mask: float = RECIPE_OFF["spec_mask"]  # the paper's recipe: none of the three
    mixup: float = RECIPE_OFF["mixup"]
    label_smoothing: float = RECIPE_OFF["label_smoothing"]
    epochs: int = PAPER_EPOCHS
    table1: Mapping[str, float] = field(default_factory=dict)

    def point(self) -> dict[str, Any]:
        """The searched hyperparameters at the paper's values."""
        return {k: getattr(self, k) for k in SEARCHED}

    def train_config(self, **overrides: Any) -> TrainConfig:
        kw = dict(arch=self.arch, **self.point(), max_epochs=self.epochs)
        kw.update(overrides)
        return TrainConfig(**kw)


# Table 1 of the paper (test set), under the metric names `mgc_ray.metrics` logs.
def _t1(f1: float, acc: float, p: float, r: float) -> dict[str, float]:
    return {"paper_f1": f1, "paper_accuracy": acc, "macro_precision": p, "macro_recall": r}


PAPER: dict[str, PaperPreset] = {
    # 1D: batch 16 "due to memory constraints"; window/n_mels unused by the 1D branch.
    "baseline_a_1d": PaperPreset(
        "baseline_a_1d", "1D Baseline A", 16, 3472, 513, table1=_t1(0.448, 0.864, 0.438, 0.457)
    ),
    # window 3472 (~160 ms) -> 513 x 128 at 22,050 Hz
    "baseline_a_2d": PaperPreset(
        "baseline_a_2d", "2D Baseline A", 32, 3472, 513, table1=_t1(0.558, 0.889, 0.556, 0.559)
    ),
    "baseline_b": PaperPreset("baseline_b", "Baseline B", 32, 3472, 513, table1=_t1(0.534, 0.883, 0.537, 0.531)),
    # window 1976 (~90 ms) -> 224 x 224 at 22,050 Hz
    "densenet": PaperPreset("densenet", "DenseNet", 32, 1976, 224, table1=_t1(0.574, 0.892, 0.578, 0.571)),
    # batch 8: the paper's memory limit for the two-branch net
    "fusion": PaperPreset("fusion", "FusionNet", 8, 1976, 224, table1=_t1(0.553, 0.888, 0.548, 0.557)),
}


def is_paper_point(arch: str, config: Mapping[str, Any], scaled: Mapping[str, Any] | None = None) -> bool:
    """Whether a trial's settings are the paper's for `arch` (the one definition of "the paper
    trial"): every searched hyperparameter equal to `PAPER[arch]`'s, floats to 1e-9 (MLflow
    params come back as text). A recipe option the config lacks (a run recorded before it
    existed) is off.

    Args:
        scaled: input sizes a --smoke search fixes to tiny values; the paper's point takes them.
    """
    preset = PAPER.get(arch)
    if preset is None:
        return False
    point = {**preset.point(), **(scaled or {})}
    config = {**RECIPE_OFF, **config}
    try:
        return all(math.isclose(float(config[k]), float(v), rel_tol=1e-9) for k, v in point.items())
    except (KeyError, TypeError, ValueError):
        return False
