"""The prediction record: one typed record per image, and the functions that fill it.

Every output of a prediction is a serialisation of one record (:mod:`skinlesion.records.schema`):
predictions.csv rows and audit-log columns (:mod:`~skinlesion.records.columns`), the REST
responses and the web page, the HTML report and the JSON of ``skinlesion explain``. The parts are
filled by :mod:`~skinlesion.records.decision` (probabilities, diagnosis, flags, referral, decision,
operating point), :mod:`~skinlesion.records.ood` (the out-of-distribution gate),
:mod:`~skinlesion.records.uncertainty` (MC dropout, review flag) and
:mod:`~skinlesion.records.metadata` (the patient metadata used), and put together by
:func:`~skinlesion.records.record.prediction_record`.

This package sits below :mod:`skinlesion.explain` and :mod:`skinlesion.delivery`: both import it,
it imports neither.
"""

from skinlesion.records.columns import BUNDLE_COLUMNS, COLUMNS, record_columns
from skinlesion.records.comparison import model_change
from skinlesion.records.decision import decision_records, operating_point_text
from skinlesion.records.metadata import (
    FIELDS,
    MetadataError,
    metadata_members,
    metadata_summary,
    normalise_metadata,
    normalise_records,
)
from skinlesion.records.ood import gate_feature_members, ood_records
from skinlesion.records.record import bundle_ref, prediction_record
from skinlesion.records.schema import (
    NOTICE,
    BundleRef,
    ChangeSummary,
    ClassFlag,
    ComparedImage,
    Comparison,
    Explanation,
    MetadataInfo,
    ModelChange,
    OutOfDistribution,
    Prediction,
    PredictionRecord,
    Referral,
    RegistrationInfo,
    Review,
    Uncertainty,
)
from skinlesion.records.uncertainty import check_mc_samples, default_mc_samples, uncertainty_records

__all__ = [
    "BUNDLE_COLUMNS",
    "COLUMNS",
    "FIELDS",
    "NOTICE",
    "BundleRef",
    "ChangeSummary",
    "ClassFlag",
    "ComparedImage",
    "Comparison",
    "Explanation",
    "MetadataError",
    "MetadataInfo",
    "ModelChange",
    "OutOfDistribution",
    "Prediction",
    "PredictionRecord",
    "Referral",
    "RegistrationInfo",
    "Review",
    "Uncertainty",
    "bundle_ref",
    "decision_records",
    "check_mc_samples",
    "default_mc_samples",
    "metadata_members",
    "metadata_summary",
    "model_change",
    "normalise_metadata",
    "normalise_records",
    "gate_feature_members",
    "ood_records",
    "operating_point_text",
    "prediction_record",
    "record_columns",
    "uncertainty_records",
]
