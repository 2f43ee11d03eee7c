"""OOD scores: each separates clearly shifted features/logits from in-distribution ones; errors; storage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skinlesion.ood.scores import SCORES, KNNScore, MahalanobisScore, make_score, score_from_dict

from ood_synthetic import D, K, in_dist, shifted

ALL = sorted(SCORES)


def _data(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x_tr, z_tr, y_tr = in_dist(300, 0)
    x_id, z_id, _ = in_dist(200, 1)
    x_ood, z_ood = shifted(200, 2)
    if SCORES[name].input == "logits":
        return z_tr, y_tr, z_id, z_ood, z_tr
    return x_tr, y_tr, x_id, x_ood, x_tr


@pytest.mark.parametrize("name", ALL)
def test_score_separates_shifted_from_in_distribution(name: str) -> None:
    train, y, held, ood, _ = _data(name)
    s = make_score(name).fit(train, y)
    s_id, s_ood = s.score(held), s.score(ood)
    assert s_id.shape == (200,) and s_ood.shape == (200,)
    assert np.mean(s_ood > np.quantile(s_id, 0.95)) > 0.95  # higher = more out-of-distribution


@pytest.mark.parametrize("name", ALL)
def test_score_round_trips_through_json_and_arrays(name: str) -> None:
    train, y, held, ood, _ = _data(name)
    s = make_score(name).fit(train, y)
    again = score_from_dict(json.loads(json.dumps(s.to_dict())), {k: v.copy() for k, v in s.arrays().items()})
    x = np.r_[held, ood]
    np.testing.assert_array_equal(again.score(x), s.score(x))


@pytest.mark.parametrize("name", ALL)
def test_unfitted_and_wrong_dimension_are_refused(name: str) -> None:
    train, y, held, _, _ = _data(name)
    with pytest.raises(RuntimeError, match=r"is not fitted yet: call fit first"):
        make_score(name).score(held)
    s = make_score(name).fit(train, y)
    with pytest.raises(ValueError, match=rf"The 'X' parameter must have {train.shape[1]} columns .* Got {train.shape[1] + 1} instead"):
        s.score(np.c_[held, held[:, :1]])
    with pytest.raises(ValueError, match=r"The 'X' parameter must be a 2-D numeric array"):
        s.score(held[0])
    with pytest.raises(ValueError, match=r"holds NaN or infinite"):
        s.score(np.full_like(held, np.nan))


def test_parameter_errors() -> None:
    x, _, y = in_dist(20, 0)
    with pytest.raises(ValueError, match=r"The 'score' parameter must be one of \['energy', 'knn', 'mahalanobis', 'msp'\]. Got 'odin' instead"):
        make_score("odin")
    with pytest.raises(ValueError, match=r"Unknown parameter\(s\) \['kk'\] for score 'knn'"):
        make_score("knn", kk=3)
    with pytest.raises(ValueError, match=r"The 'y' parameter is required"):
        MahalanobisScore().fit(x)
    with pytest.raises(ValueError, match=r"The 'y' parameter must hold one integer class index per row of X \(20\)"):
        MahalanobisScore().fit(x, y[:5])
    with pytest.raises(ValueError, match=r"The 'shrinkage' parameter must be 'ledoit-wolf' or a number in \[0, 1\]. Got 2 instead"):
        MahalanobisScore(shrinkage=2).fit(x, y)
    with pytest.raises(ValueError, match=r"The 'k' parameter must be at most the number of training features \(20\). Got 21 instead"):
        KNNScore(k=21).fit(x)
    with pytest.raises(ValueError, match=r"The 'k' parameter must be a positive integer. Got 0 instead"):
        KNNScore(k=0).fit(x)
    with pytest.raises(ValueError, match=r"The 'temperature' parameter must be a number > 0. Got 0 instead"):
        make_score("energy", temperature=0).fit(x)
    with pytest.raises(ValueError, match=r"The stored score name must be one of"):
        score_from_dict({"name": "odin"})
    with pytest.raises(ValueError, match=r"The stored 'knn' score lacks array\(s\) \['bank'\]"):
        score_from_dict(KNNScore(k=1).fit(x).to_dict(), {})


def test_knn_bank_is_capped_fp16_and_normalised() -> None:
    x, _, _ = in_dist(300, 0)
    s = KNNScore(k=3, max_bank=100, seed=1).fit(x)
    assert s.bank_.shape == (100, D) and s.bank_.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(s.bank_.astype(np.float32), axis=1), 1.0, atol=1e-3)
    np.testing.assert_array_equal(KNNScore(k=3, max_bank=100, seed=1).fit(x).bank_, s.bank_)  # deterministic
    assert np.all(s.score(s.bank_.astype(np.float32))[:, None] >= 0)


def test_mahalanobis_fits_class_means_and_shared_precision() -> None:
    x, _, y = in_dist(300, 0)
    s = MahalanobisScore(shrinkage=0.1).fit(x, y)
    assert s.means_.shape == (K, D) and s.precision_.shape == (D, D) and s.shrinkage_ == 0.1
    np.testing.assert_allclose(s.means_, np.stack([x[y == k].mean(0) for k in range(K)]), atol=1e-5)
    # a class mean is at distance 0 from itself
    assert s.score(s.means_.astype(np.float64)).max() < 1e-6


def test_knn_scores_follow_a_refitted_bank() -> None:
    """The float32 copy of the bank is kept between calls, and made anew when the bank changes."""
    x_a, x_b = in_dist(200, seed=0)[0], shifted(200, seed=1)[0]
    s = KNNScore(k=5).fit(x_a)
    first = s.score(x_b[:10])
    np.testing.assert_array_equal(s.score(x_b[:10]), first)  # the kept copy gives the same scores
    s.fit(x_b)
    np.testing.assert_array_equal(s.score(x_b[:10]), KNNScore(k=5).fit(x_b).score(x_b[:10]))
    assert not np.allclose(s.score(x_b[:10]), first)
