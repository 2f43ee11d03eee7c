"""The OOD gate: threshold on held-out scores, several members, storage round trip, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from skinlesion.ood import OODGate

from ood_synthetic import in_dist, member_outputs, shifted

PARAMS = {"mahalanobis": {}, "knn": {"k": 5}, "energy": {}, "msp": {}, "mahalanobis+knn": {"knn": {"k": 5}}, "knn+energy": {}}


def _fitted(score: str, quantile: float = 0.95, members: list[str] | None = None) -> tuple[OODGate, list, list]:
    x_tr, z_tr, y_tr = in_dist(300, 0)
    x_val, z_val, _ = in_dist(200, 1)
    gate = OODGate(score, quantile=quantile, members=members, params=PARAMS[score])
    return gate.fit(member_outputs(x_tr, z_tr), member_outputs(x_val, z_val), y_tr), member_outputs(x_val, z_val), member_outputs(*shifted(100, 2))


@pytest.mark.parametrize("score", sorted(PARAMS))
@pytest.mark.parametrize("quantile", [0.9, 0.95, 0.99])
def test_threshold_gates_at_most_the_requested_fraction_of_heldout(score: str, quantile: float) -> None:
    gate, val, ood = _fitted(score, quantile)
    gated = gate.predict(val).mean()
    assert gated == gate.heldout_gated_fraction_
    assert 1 - quantile - 2 / 200 <= gated <= 1 - quantile + 1e-12
    assert gate.predict(ood).mean() > 0.9
    assert gate.n_train_ == 300 and gate.n_heldout_ == 200


@pytest.mark.parametrize("score", sorted(PARAMS))
def test_to_dict_from_dict_and_save_load_give_identical_decisions(score: str, tmp_path: Path) -> None:
    gate, val, ood = _fitted(score)
    outputs = [type(v)(v.member, np.r_[v.features, o.features], np.r_[v.logits, o.logits]) for v, o in zip(val, ood, strict=True)]
    d = json.loads(json.dumps(gate.to_dict()))
    again = OODGate.from_dict(d, gate.arrays())
    np.testing.assert_array_equal(again.score(outputs), gate.score(outputs))
    np.testing.assert_array_equal(again.predict(outputs), gate.predict(outputs))
    saved = gate.save(tmp_path)
    loaded = OODGate.load(json.loads(json.dumps(saved)), tmp_path)
    np.testing.assert_array_equal(loaded.predict(outputs), gate.predict(outputs))
    assert saved["arrays"]["bytes"] == (tmp_path / "ood_gate.npz").stat().st_size
    assert d["gate_when"] == "score > threshold" and d["members"] == ["a", "b"]


def test_members_subset_uses_those_members_only() -> None:
    gate, val, _ = _fitted("knn", members=["b"])
    assert gate.members_ == ["b"] and len(gate.scorers_) == 1
    np.testing.assert_array_equal(gate.score(val), gate.score(val[1:]))  # member a's outputs are not needed
    both, _, _ = _fitted("knn")
    np.testing.assert_allclose(both.score(val), np.mean([s[0].score(v.features) for s, v in zip(both.scorers_, val, strict=True)], axis=0))


def test_combined_score_is_the_maximum_of_standardised_components() -> None:
    gate, val, _ = _fitted("mahalanobis+knn")
    assert gate.components_ == ["mahalanobis", "knn"] and set(gate.standardise_) == {"mahalanobis", "knn"}
    assert gate.to_dict()["params"] == {"mahalanobis": {"shrinkage": "ledoit-wolf"}, "knn": {"k": 5, "max_bank": 500, "seed": 0}}
    m, k = (_fitted(c)[0] for c in ("mahalanobis", "knn"))
    parts = [(g.score(val) - gate.standardise_[c][0]) / gate.standardise_[c][1] for g, c in ((m, "mahalanobis"), (k, "knn"))]
    np.testing.assert_allclose(gate.score(val), np.maximum(*parts))
    # each component standardised so that its held-out quantile is 1
    np.testing.assert_allclose(np.quantile(parts[1], 0.95), 1.0)


def test_is_out_compares_with_the_threshold() -> None:
    gate, _, _ = _fitted("energy")
    t = gate.threshold_
    np.testing.assert_array_equal(gate.is_out([t - 1, t, t + 1e-9]), [False, False, True])
    assert bool(gate.is_out(t + 1))


def test_gate_errors(tmp_path: Path) -> None:
    gate, val, _ = _fitted("knn")
    with pytest.raises(RuntimeError, match=r"This OODGate is not fitted yet: call fit first"):
        OODGate().score(val)
    with pytest.raises(RuntimeError, match=r"not fitted yet"):
        OODGate().to_dict()
    with pytest.raises(ValueError, match=r"The 'outputs' parameter lacks the outputs of member\(s\) \['a'\]; it has \['b'\]"):
        gate.score(val[1:])
    with pytest.raises(ValueError, match=r"The 'X' parameter must have 16 columns"):
        gate.score([type(v)(v.member, v.features[:, :8], v.logits) for v in val])
    with pytest.raises(ValueError, match=r"The 'quantile' parameter must be a number in \(0, 1\]. Got 1.5 instead"):
        OODGate("knn", quantile=1.5).fit(val, val)
    with pytest.raises(ValueError, match=r"The 'score' parameter must be one of"):
        OODGate("odin").fit(val, val)
    with pytest.raises(ValueError, match=r"The 'score' parameter names a score twice. Got 'knn\+knn' instead"):
        OODGate("knn+knn").fit(val, val)
    with pytest.raises(ValueError, match=r"The 'params' parameter of a combined score must be \{score name: params\}"):
        OODGate("knn+energy", params={"k": 3}).fit(val, val)
    with pytest.raises(ValueError, match=r"holds NaN"):
        gate.is_out([np.nan])
    with pytest.raises(ValueError, match=r"The stored OOD gate lacks field\(s\) \['threshold'\]"):
        OODGate.from_dict({k: v for k, v in gate.to_dict().items() if k != "threshold"}, gate.arrays())
    with pytest.raises(ValueError, match=r"The stored 'knn' score lacks array\(s\) \['bank'\]"):
        OODGate.from_dict(gate.to_dict(), {})
    with pytest.raises(ValueError, match=r"must have one scorer per member \(2\) and score \['knn'\]"):
        OODGate.from_dict({**gate.to_dict(), "scorers": gate.to_dict()["scorers"][:1]}, gate.arrays())
    saved = gate.save(tmp_path)
    (tmp_path / "ood_gate.npz").write_bytes(b"x" + (tmp_path / "ood_gate.npz").read_bytes())
    with pytest.raises(ValueError, match=r"does not match the sha256 recorded for the OOD gate; refit the gate"):
        OODGate.load(saved, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"arrays .* are missing; refit the gate"):
        OODGate.load(saved, tmp_path / "elsewhere")
