"""`StudySearcher`: the Tune `Searcher` over the search's Optuna study (`mgc_ray.search.study`).

Tune calls it in the driver: `suggest` asks the study for a trial (define-by-run),
`on_trial_result` reports each epoch as an intermediate value, `on_trial_complete`
tells COMPLETE, PRUNED (stopped before `max_epochs` without an error) or FAIL.
Its own pickled state is small (the sampler and which study trial each live Tune
trial is); the study's history is the storage's, so `--resume` keeps it whole.
"""

from __future__ import annotations

import math
import pickle
from typing import Any, Sequence

from ray.tune.search import Searcher

from mgc_ray.config import SEARCHED
from mgc_ray.errors import UserError
from mgc_ray.search import study as S


class StudySearcher(Searcher):
    """See the module doc and `mgc_ray.search.study`.

    Args:
        storage: an Optuna RDB URL (`sqlite:///...`).
        study_name: the search's name.
        spaces: one `search.SearchSpace` per arch (several: one study over archs, conditional).
        seed: the default TPE sampler's.
        max_epochs: a trial's full length; one that ended sooner without an error was stopped.
        resume: continue the study of that name (otherwise such a study must not exist yet).
        warm_start: earlier studies in the same storage whose finished trials this one starts from.
        sampler: an Optuna sampler (default: TPE seeded with `seed`).
        pruned_feedback: False tells a stopped trial COMPLETE with its last value, as Ray's
            stock OptunaSearch does (the search-quality benchmark's comparison only).
    """

    def __init__(
        self,
        storage: str,
        study_name: str,
        spaces: Sequence,
        seed: int,
        max_epochs: int,
        *,
        metric: str,
        mode: str,
        resume: bool = False,
        warm_start: Sequence[str] = (),
        sampler: Any = None,
        pruned_feedback: bool = True,
    ):
        import optuna

        super().__init__(metric=metric, mode=mode)
        self.storage, self.study_name = storage, study_name
        self.spaces = list(spaces)
        self.multi = len(self.spaces) > 1
        self.max_epochs = max_epochs
        self.pruned_feedback = pruned_feedback
        self.sampler = sampler if sampler is not None else optuna.samplers.TPESampler(seed=seed)
        self.live: dict[str, int] = {}  # Tune trial id -> study trial number
        self._study = None
        self._create(resume, tuple(warm_start))

    # -- the study
    def _create(self, resume: bool, warm: Sequence[str]) -> None:
        import optuna

        try:  # the study the search's name claimed (names.claim), still empty
            self._study = optuna.load_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler)
        except KeyError:  # a name the user gave
            self._study = optuna.create_study(
                storage=self.storage,
                study_name=self.study_name,
                direction="minimize" if self.mode == "min" else "maximize",
                sampler=self.sampler,
                load_if_exists=True,
            )
        started = bool(self._study.user_attrs) or bool(self._study.get_trials(deepcopy=False))
        if started and not resume:
            raise UserError(
                f"an Optuna study named {self.study_name!r} already exists in {self.storage}: "
                "add --resume to continue it, or choose another --experiment-name"
            )
        if started:
            return
        self._study.set_user_attr("archs", [s.arch for s in self.spaces])
        self._study.set_user_attr("metric", self.metric)
        held = []
        if warm:
            trials = S.warm_trials(self.storage, warm, self.spaces, self.multi)
            self._study.add_trials(trials)
            held = [t.params for t in trials]
        for s in self.spaces:  # each arch's first settings (the paper's), unless a warm trial holds them
            point = S.study_point(s, self.multi)
            if point and not any(S.same_point(point, h) for h in held):
                self._study.enqueue_trial(point)

    @property
    def study(self):
        if self._study is None:
            import optuna

            self._study = optuna.load_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler)
        return self._study

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_study"] = None  # reopened from the storage
        return state

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is the study's own (define-by-run); Tune's param_space holds constants

    # -- Tune's calls
    def suggest(self, trial_id: str) -> dict:
        trial = self.study.ask()
        archs = [s.arch for s in self.spaces]
        arch = trial.suggest_categorical(S.ARCH_PARAM, archs) if self.multi else archs[0]
        space = self.spaces[archs.index(arch)]
        config: dict[str, Any] = {"arch": arch}
        for name in SEARCHED:
            entry = space.space.get(name)
            config[name] = (
                space.start[name] if entry is None else entry.suggest(trial, S.param_name(arch, name, self.multi))
            )
        trial.set_user_attr(S.TUNE_ID_ATTR, trial_id)
        trial.set_user_attr(S.ARCH_PARAM, arch)
        self.live[trial_id] = trial.number
        return config

    def _trial(self, trial_id: str):
        import optuna

        number = self.live.get(trial_id)
        if number is None:
            return None
        study = self.study
        internal = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        return optuna.trial.Trial(study, internal)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        trial = self._trial(trial_id)
        value = result.get(self.metric)
        if trial is None or value is None or not math.isfinite(value):
            return
        step = int(result["training_iteration"])
        if step not in trial.study._storage.get_trial(trial._trial_id).intermediate_values:
            trial.report(float(value), step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        trial = self._trial(trial_id)
        if trial is None:
            return
        value = (result or {}).get(self.metric)
        if result and "training_iteration" in result:
            self.on_trial_result(trial_id, result)  # Tune passes a trial's last result only here
        if error or value is None or not math.isfinite(value):
            self.study.tell(trial, state=TrialState.FAIL)
        elif self.pruned_feedback and int(result.get("training_iteration", 0)) < self.max_epochs:
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, float(value))
        self.live.pop(trial_id, None)

    # -- Tune's searcher state
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        from optuna.trial import TrialState

        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        # A trial asked after Tune's last save is unknown to Tune too, which will not resume
        # it: it ends FAIL (marked lost) instead of staying RUNNING in the study.
        known = set(self.live.values())
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number not in known:
                self.study._storage.set_trial_user_attr(t._trial_id, "lost", True)
                self.study.tell(t.number, state=TrialState.FAIL)
