"""`scoring.ensemble_scores`: the mean of members' probabilities, scored like one model."""

import numpy as np
import pytest

from mgc_ray.trial.scoring import ensemble_scores, from_probabilities

NAMES = ["a", "b", "c"]


def _member(prob: np.ndarray, labels: np.ndarray, ids=(10, 11, 12, 13)):
    return from_probabilities(prob, prob, labels, ids, NAMES)


def test_two_members_wrong_on_different_tracks_are_right_together():
    labels = np.array([0, 1, 2, 0])
    # each member is right on 3 of 4 tracks, confidently; on its wrong track only narrowly wrong
    one = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1]])
    two = np.array([[0.4, 0.5, 0.1], [0.1, 0.8, 0.1], [0.05, 0.05, 0.9], [0.8, 0.1, 0.1]])
    a, b = _member(one, labels), _member(two, labels)
    assert a.crop["top1_accuracy"] == b.crop["top1_accuracy"] == 0.75
    ens = ensemble_scores([a, b], NAMES)
    assert ens.crop["top1_accuracy"] == 1.0 and ens.track["top1_accuracy"] == 1.0
    np.testing.assert_allclose(ens.crop_prob, (one + two) / 2)
    expected_loss = -np.mean(np.log(((one + two) / 2)[np.arange(4), labels]))
    assert ens.crop["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert ens.confusion.trace() == 4 and ens.track_ids == (10, 11, 12, 13)
    for k, (low, high) in ens.crop_ci.items():
        assert low <= ens.crop[k] <= high


def test_one_member_is_itself():
    labels = np.array([0, 1, 2, 0])
    prob = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.2, 0.3], [0.9, 0.05, 0.05]])
    alone = _member(prob, labels)
    ens = ensemble_scores([alone], NAMES)
    assert ens.crop == pytest.approx(alone.crop) and (ens.crop_pred == alone.crop_pred).all()


def test_members_scored_on_other_tracks_are_refused():
    labels = np.array([0, 1, 2, 0])
    prob = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="different tracks"):
        ensemble_scores([_member(prob, labels), _member(prob, labels, ids=(1, 2, 3, 4))], NAMES)
