"""A whole :class:`~skinlesion.records.schema.PredictionRecord` from its parts."""

from __future__ import annotations

from typing import cast

from skinlesion.ensemble.bundle import Bundle
from skinlesion.metrics.classification import to_jsonable
from skinlesion.records.schema import (
    NOTICE,
    BundleRef,
    MetadataInfo,
    OutOfDistribution,
    Prediction,
    PredictionRecord,
    Uncertainty,
)


def bundle_ref(bundle: Bundle, engine: str | None = None) -> BundleRef:
    """The record's ``bundle``: name, id (sha256 of bundle.json), members and, when known, the engine."""
    ref = BundleRef(name=bundle.spec.name, id=bundle.bundle_id, members=[m.name for m in bundle.members])
    if engine is not None:
        ref["engine"] = engine
    return ref


def prediction_record(
    bundle: BundleRef, prediction: Prediction, uncertainty: Uncertainty | None, metadata: MetadataInfo,
    ood: OutOfDistribution | None = None,
) -> PredictionRecord:
    """The record of one image, JSON-ready (numpy scalars as Python numbers, NaN and inf as None)."""
    record = PredictionRecord(
        notice=NOTICE, bundle=bundle, prediction=prediction, uncertainty=uncertainty, metadata=metadata, ood=ood
    )
    return cast(PredictionRecord, to_jsonable(record))
