"""ASHA's rungs in training samples seen, the default grace period, and cuts made at chance.

Time unit: each trial's `cost/samples_seen` (training samples so far, restored epochs
included), so a rung compares trials after the same work whatever their batch size. The
rungs sit at whole epochs of the space's smallest epoch (`samples_per_epoch`: a batch of B
drops the last n mod B tracks), so every trial meets a rung at the end of the same epoch.

The grace period, when --grace-period is not given (`grace_epochs`): the fewest epochs in which
a trial at the space's largest batch has both
- taken as many optimizer steps as a trial at the first trial's batch (the paper's) takes in
  one epoch: a cut never compares a batch of 64 after half the updates of a batch of 32;
- taken MIN_STEPS steps: enough for Adam at the paper's lr to move a fresh network off its
  starting loss (on FMA small, one epoch at batch 64),
at most half of --max-epochs (so at least one rung comes before the last epoch) and at least 1.

A rung whose trials are all still at chance decides nothing: each cut there is printed with
the figures (`SampleASHA`), and the search's summary says so. "At chance": a validation loss
within CHANCE_SHARE of what predicting the training split's genre mix scores on the validation
split (ln K for K balanced genres).
"""

from __future__ import annotations

import math
from typing import Sequence

from ray.tune.schedulers import ASHAScheduler

from mgc_ray.data.cache import Manifest
from mgc_ray.search.space import SearchSpace, batch_sizes

# ASHA halves the field at each rung: with a grace of 1 epoch and 4 epochs, rungs at 1, 2, 4 epochs.
REDUCTION_FACTOR = 2

MIN_STEPS = 100
CHANCE_SHARE = 0.97  # a fresh network sits at 1.00-1.01 x ln K (2.079-2.093 on the 8-genre demo)
TIME_ATTR = "cost/samples_seen"


def samples_per_epoch(n_train: int, batches: Sequence[int]) -> int:
    """The fewest training samples any of these batch sizes sees in an epoch (the last partial batch is dropped)."""
    return min(n_train // b * b for b in batches)


def grace_epochs(n_train: int, first_batches: Sequence[int], largest_batch: int, max_epochs: int) -> int:
    """The default grace period in epochs (the rule in the module doc).

    Args:
        n_train: training tracks (one crop each per epoch).
        first_batches: the first trial's batch size of each space searched (the paper's by default).
        largest_batch: the largest batch size a trial may draw.
    """
    steps_largest = max(1, n_train // largest_batch)
    equal_updates = max(math.ceil(max(1, n_train // b) / steps_largest) for b in first_batches)
    warm = math.ceil(MIN_STEPS / steps_largest)
    return max(1, min(max(equal_updates, warm), max_epochs // 2))


def chance_loss(manifest: Manifest) -> float:
    """Validation cross-entropy of always predicting the training split's genre mix."""
    train, val = manifest.counts["train"], manifest.counts["val"]
    n_train, n_val = sum(train.values()), sum(val.values())
    return -sum(v / n_val * math.log(max(train.get(g, 0), 1) / n_train) for g, v in val.items() if v)


def at_chance(losses: Sequence[float], chance: float) -> bool:
    """Whether every one of these validation losses is still at chance."""
    return bool(losses) and all(loss >= CHANCE_SHARE * chance for loss in losses)


class SampleASHA(ASHAScheduler):
    """ASHA over `cost/samples_seen`, telling each cut made among trials all still at chance.

    `chance_cuts`: {rung in samples: trials compared there} of the rungs that cut at chance
    (driver memory; pickled with the scheduler into Tune's experiment state).
    """

    def __init__(
        self,
        *,
        max_epochs: int,
        grace: int,
        per_epoch: int,
        chance: float,
        reduction_factor: float,
        metric: str | None = None,
        mode: str | None = None,
    ):
        super().__init__(
            time_attr=TIME_ATTR,
            metric=metric,
            mode=mode,
            max_t=max_epochs * per_epoch,
            grace_period=grace * per_epoch,
            reduction_factor=reduction_factor,
        )
        self.per_epoch, self.chance = per_epoch, chance
        self.chance_cuts: dict[float, int] = {}

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == self.STOP and result.get(TIME_ATTR, 0) < self._max_t:
            self._tell_chance_cut(trial, result)
        return action

    def _tell_chance_cut(self, trial, result: dict) -> None:
        # Ray 2.60's ASHA keeps each trial's bracket in _trial_info and a bracket's rungs as
        # [(milestone, {trial_id: metric_op * metric})], the highest milestone first.
        bracket = self._trial_info.get(trial.trial_id)
        for milestone, recorded in getattr(bracket, "_rungs", []):
            if trial.trial_id in recorded and result[TIME_ATTR] >= milestone:
                losses = [v * self._metric_op for v in recorded.values()]  # min mode: metric_op -1
                if at_chance(losses, self.chance) and milestone not in self.chance_cuts:
                    self.chance_cuts[milestone] = len(losses)
                    print(
                        f"mgc_ray: warning: ASHA cut trial {trial.trial_id} at the rung of {milestone:,.0f} "
                        f"training samples ({_epochs(milestone / self.per_epoch)}), where all {len(losses)} "
                        f"trials were still at chance (validation loss >= {CHANCE_SHARE:g} x "
                        f"{self.chance:.3f}): the cut says nothing of them yet; a longer --grace-period "
                        "(or more training data) lets learning start",
                        flush=True,
                    )
                return


def chance_note(scheduler) -> str | None:
    """The summary's sentence on rungs that cut at chance, if any did."""
    cuts = getattr(scheduler, "chance_cuts", None)
    if not cuts:
        return None
    rungs = ", ".join(f"{_epochs(m / scheduler.per_epoch)} ({n} trials)" for m, n in sorted(cuts.items()))
    return (
        f"ASHA cut trials at rungs where every trial was still at chance: {rungs}. Those cuts say nothing of "
        "the trials they stopped; a longer --grace-period (or more training data) lets learning start."
    )


def _epochs(n: float) -> str:
    return f"{n:g} epoch" + ("" if n == 1 else "s")


def make_scheduler(
    spaces: Sequence[SearchSpace],
    manifest: Manifest,
    max_epochs: int,
    grace_period: int | None,
    paper_only: bool = False,
) -> "SampleASHA":
    """ASHA over training samples seen (`SampleASHA`), its grace period `grace_period` epochs,
    or the default rule (`grace_epochs`) when None."""
    n_train = manifest.num_tracks["train"]
    batches = sorted({b for s in spaces for b in batch_sizes(s, paper_only)})
    grace = grace_period or grace_epochs(
        n_train, [int(s.start["batch_size"]) for s in spaces], max(batches), max_epochs
    )
    return SampleASHA(
        max_epochs=max_epochs,
        grace=max(1, min(grace, max_epochs)),
        per_epoch=samples_per_epoch(n_train, batches),
        chance=chance_loss(manifest),
        reduction_factor=REDUCTION_FACTOR,
    )
