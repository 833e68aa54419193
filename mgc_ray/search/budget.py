"""Budgets of a search: --time-budget (wall time), --gpu-hours, and the demo's own.

When a budget is spent the search starts no new trial and stops each running trial at
its next report, keeping that epoch (its result and its checkpoint). The search then
ends as a finished one: the best finished epoch is evaluated on the test split, and
MLflow, results/ and the table are written as usual, saying that the budget ended it.

Three Tune pieces share one ledger:
  Budget         a Tune callback: counts the search's wall time and its trials' GPU-seconds
                 (each RUNNING trial's GPUs x the time it runs). Its state (what was spent,
                 the limits) is saved with Tune's experiment state, so --resume continues
                 the count; a budget given with --resume replaces the saved limits.
  BudgetStopper  stops a trial at a report once the budget is spent.
  BudgetLimiter  Tune's ConcurrencyLimiter that also stops suggesting trials once it is spent.
Tune pickles the stopper into its experiment state and, on --resume, puts the unpickled
copy in place of the one given (TuneController.__setstate__); the limiter comes back from
the pickled Tuner. So neither holds the ledger: both read the driver's active one, which
the Budget callback registers when Tune sets it up (one search per driver process).

`plan_ahead` (the demo's budget, which must end the whole command on time): a trial also
stops at a report when its next epoch, as long as its longest so far, would end past the
budget, and a new trial starts only if a first epoch as long as the longest seen still fits.
`min_trials`: trials that start even when the budget is spent (1: there is always an epoch
to evaluate; the demo asks for 2, the paper trial and one sampled trial).
"""

from __future__ import annotations

import time

from ray.tune import Callback, Stopper
from ray.tune.search import ConcurrencyLimiter, Searcher

from mgc_ray.search.duration import fmt_duration

_ACTIVE: "Budget | None" = None  # the budget of the search this driver runs (set in Budget.setup)


def active() -> "Budget | None":
    return _ACTIVE


class Budget(Callback):
    """The ledger: limits, what was spent, and whether the budget ended the search.

    Args:
        time_s: wall-time budget of the search (None: none).
        gpu_s: GPU-seconds budget (None: none).
        min_trials: trials that start even when the budget is spent.
        plan_ahead: stop before the budget rather than at the first report after it (the demo's).
    """

    def __init__(
        self, time_s: float | None = None, gpu_s: float | None = None, min_trials: int = 1, plan_ahead: bool = False
    ):
        self.time_s, self.gpu_s, self.min_trials, self.plan_ahead = time_s, gpu_s, min_trials, plan_ahead
        self.wall_before = self.gpu_before = 0.0  # spent by earlier sessions of this search (--resume)
        self.resumed = False
        self.ended: str | None = None  # why the budget ended the search, once it stopped or refused a trial
        self.stopped: dict[str, int] = {}  # trial id -> the epoch (training_iteration) it was stopped after
        self._start: float | None = None
        self._end: float | None = None  # the search's end: the clock counts the search, not the evaluation after it
        self._last_step: float | None = None
        self._gpu_now = 0.0
        self._trials = 0
        self._began: dict[str, float] = {}  # trial id -> when Tune started it (this session)
        self._epoch_s: dict[str, float] = {}  # trial id -> its longest epoch (plan_ahead's estimate of its next)
        self._first_epoch_s = 0.0  # the longest start-to-first-report seen (plan_ahead's estimate for a new trial)

    # --- what was spent -----------------------------------------------------------------
    def wall(self) -> float:
        if self._start is None:
            return self.wall_before
        return self.wall_before + (self._end or time.monotonic()) - self._start

    def gpu(self) -> float:
        return self.gpu_before + self._gpu_now

    def limited(self) -> bool:
        return self.time_s is not None or self.gpu_s is not None

    def spent(self, ahead_s: float = 0.0) -> str | None:
        """Why the budget is spent (or will be in `ahead_s` seconds), None while it is not."""
        if self.time_s is not None and self.wall() + ahead_s >= self.time_s:
            return f"the time budget of {fmt_duration(self.time_s)} was spent"
        if self.gpu_s is not None and self.gpu() >= self.gpu_s:
            return f"the GPU budget of {self.gpu_s / 3600:g} GPU-hours was spent"
        return None

    def describe(self) -> str:
        parts = []
        if self.time_s is not None:
            parts.append(f"time budget {fmt_duration(self.time_s)}")
        if self.gpu_s is not None:
            parts.append(f"GPU budget {self.gpu_s / 3600:g} GPU-hours")
        spent = (
            f"; {fmt_duration(self.wall_before)} and {self.gpu_before / 3600:.3g} GPU-hours spent before this --resume"
            if self.resumed
            else ""
        )
        return " and ".join(parts) + spent

    # --- decisions (BudgetStopper, BudgetLimiter) ---------------------------------------
    def stop_trial(self, trial_id: str, result: dict) -> bool:
        """Stop this trial after the epoch it has just reported?"""
        if not self.limited():
            return False
        epoch = int(result.get("training_iteration", 0))
        if epoch >= float((result.get("config") or {}).get("max_epochs", float("inf"))):
            return False  # its last epoch: it ends anyway
        last = max(self._epoch_s.get(trial_id, 0.0), float(result.get("time_this_iter_s", 0.0)))
        self._epoch_s[trial_id] = last
        if epoch == 1:  # the trial's start (its worker, imports, data) counts too: a new trial pays it again
            began = self._began.get(trial_id)
            self._first_epoch_s = max(self._first_epoch_s, last, time.monotonic() - began if began else 0.0)
        ahead = last + max(0, self.min_trials - self._trials) * self._first_epoch_s if self.plan_ahead else 0.0
        reason = self.spent(ahead)
        if reason:
            self.ended = self.ended or reason
            self.stopped[trial_id] = epoch
        return reason is not None

    def refuse_trial(self) -> bool:
        """Start no new trial?"""
        if not self.limited() or self._trials < self.min_trials:
            return False
        reason = self.spent(self._first_epoch_s if self.plan_ahead else 0.0)
        if reason:
            self.ended = self.ended or reason
        return reason is not None

    # --- Tune callback --------------------------------------------------------------------
    def setup(self, **info):
        global _ACTIVE
        _ACTIVE = self
        self._start = self._last_step = time.monotonic()
        if self.limited() and self.plan_ahead:
            print(
                f"mgc_ray: {self.describe()}: a trial stops at a report when its next epoch would end past it, "
                "and a new trial starts only if its first epoch fits",
                flush=True,
            )
        elif self.limited():
            print(
                f"mgc_ray: {self.describe()}: once it is spent no new trial starts and running trials "
                "stop at their next report",
                flush=True,
            )

    def on_trial_start(self, iteration, trials, trial, **info):
        self._began[trial.trial_id] = time.monotonic()

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        dt, self._last_step = now - (self._last_step or now), now
        self._trials = len(trials)
        self._gpu_now += dt * sum(
            t.placement_group_factory.required_resources.get("GPU", 0.0) for t in trials if t.status == "RUNNING"
        )

    def on_experiment_end(self, trials, **info):
        global _ACTIVE
        self._end = time.monotonic()
        if _ACTIVE is self:
            _ACTIVE = None

    def get_state(self) -> dict:
        return {
            "wall_s": self.wall(),
            "gpu_s": self.gpu(),
            "time_s": self.time_s,
            "gpu_limit_s": self.gpu_s,
            "min_trials": self.min_trials,
            "plan_ahead": self.plan_ahead,
        }

    def set_state(self, state: dict) -> None:
        """--resume: continue the count; keep the saved limits unless this command gives its own."""
        self.wall_before, self.gpu_before, self.resumed = float(state["wall_s"]), float(state["gpu_s"]), True
        if not self.limited():
            self.time_s, self.gpu_s = state.get("time_s"), state.get("gpu_limit_s")
            self.min_trials, self.plan_ahead = state.get("min_trials", 1), state.get("plan_ahead", False)

    def __getstate__(self):  # Tune pickles callbacks with the Tuner; a clock means nothing in another process
        return {**self.__dict__, "_start": None, "_end": None, "_last_step": None}


class BudgetStopper(Stopper):
    """Stops a trial at its first report once the active budget is spent."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        budget = active()
        return budget is not None and budget.stop_trial(trial_id, result)

    def stop_all(self) -> bool:
        return False  # running trials end at their own next report, never in the middle of an epoch


class BudgetLimiter(ConcurrencyLimiter):
    """Tune's ConcurrencyLimiter that suggests no more trials once the active budget is spent."""

    def suggest(self, trial_id: str):
        budget = active()
        if budget is not None and budget.refuse_trial():
            return Searcher.FINISHED
        return super().suggest(trial_id)
