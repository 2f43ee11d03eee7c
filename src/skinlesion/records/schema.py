"""The prediction record: one typed schema for every output of a prediction.

A :class:`PredictionRecord` is what :meth:`~skinlesion.delivery.engine.Predictor.predict` returns
per image, and :class:`Explanation` what an explanation returns (the record plus attention map,
segmentation, ABCDE, Total Dermoscopy Score and concept sensitivities). Both are ``TypedDict``\\ s:
at run time plain JSON-ready dicts (the audit log stores them as they are), for a type checker and
for pydantic typed records. The REST service's response models are built from them
(:mod:`skinlesion.delivery.service.schemas`), so ``/openapi.json`` documents these fields with
these descriptions, and predictions.csv and the audit log read their columns from them
(:mod:`skinlesion.records.columns`).

A new output field is declared here, once, and filled where it is computed
(:mod:`~skinlesion.records.decision`, :mod:`~skinlesion.records.uncertainty`,
:mod:`~skinlesion.records.metadata`, :mod:`skinlesion.explain.pipeline`).

The key order declared here is the order of the REST responses; the filling functions keep the
order of the JSON files the CLI writes.
"""

# No ``from __future__ import annotations``: TypedDict reads NotRequired[...] at class creation.
from typing import Annotated, Any

from pydantic import Field
from typing_extensions import NotRequired, TypedDict  # pydantic needs typing_extensions' TypedDict on Python < 3.12

NOTICE = (
    "Decision support for research use, not a diagnosis. Probabilities, thresholds, attention maps, "
    "ABCDE measurements and uncertainty describe the model and the image; a clinician must interpret them."
)


class BundleRef(TypedDict):
    """The model that predicted."""

    name: str | None
    id: Annotated[str, Field(description="sha256 of bundle.json: names the exact model.")]
    members: list[str]
    engine: NotRequired[Annotated[str, Field(description="torch, onnx-fp32 or onnx-int8 (absent outside the Predictor).")]]


class ClassFlag(TypedDict):
    """One thresholded class (MEL, AKIEC, SCC...): raised when its probability reaches the threshold
    fitted for the class's clinical target, whatever the diagnosis."""

    class_name: str
    flagged: Annotated[bool, Field(description="True: this class cannot be excluded (p >= threshold).")]
    text: Annotated[str, Field(description="The flag in words, e.g. 'melanoma cannot be excluded'.")]
    probability: float
    threshold: float
    target: Annotated[str, Field(description="The clinical target the threshold was fitted for and whether it was met on held-out data.")]
    status: Annotated[str | None, Field(description="met, or infeasible (then 'target' says which target was kept and what the other reaches).")]


class Referral(TypedDict):
    """The triage output: refer when the probability of any malignant class passes the threshold
    fitted for malignant sensitivity (lower confidence bound) on held-out data."""

    refer: bool
    text: str
    malignant_probability: Annotated[float, Field(description="Sum of the calibrated probabilities of the malignant classes.")]
    threshold: float
    malignant_classes: list[str]
    target: Annotated[str, Field(description="The sensitivity target, and the held-out sensitivity and specificity it gave.")]
    status: str | None


class OutOfDistribution(TypedDict):
    """The out-of-distribution gate: whether the image looks like the dermoscopic images the model was trained on."""

    gated: Annotated[bool, Field(description="True: this image does not look like the training images; do not rely on the diagnosis.")]
    warning: Annotated[str | None, Field(description="The warning shown with every result of a gated image.")]
    score: float
    threshold: float
    method: Annotated[str, Field(description="The score, the members it uses and how its threshold was fitted.")]


class Prediction(TypedDict):
    """Probabilities; the diagnosis, the class flags and the referral; the decision of the bundle's
    policy, with what decided it."""

    probabilities: Annotated[dict[str, float], Field(description="Calibrated ensemble probability per class.")]
    argmax: str
    diagnosis: Annotated[str, Field(description="The most likely class under the rule fitted for balanced accuracy (argmax when none is fitted).")]
    diagnosis_rule: Annotated[str, Field(description="How the diagnosis was chosen, in words.")]
    flags: Annotated[list[ClassFlag], Field(description="One flag per thresholded class (MEL, AKIEC, SCC...), independent of the diagnosis.")]
    referral: Annotated[Referral | None, Field(description="Refer / no referral for a malignancy; None when the bundle has no referral fitted.")]
    policy: Annotated[str, Field(description="Which rule gives 'decision': diagnosis (default) or priority-threshold (the reference system's rule).")]
    decision: Annotated[str, Field(description="The class the bundle's policy chose (the diagnosis under the default policy).")]
    decided_by: Annotated[str, Field(description="The diagnosis rule, the threshold that fired, or 'most probable class'.")]
    threshold_fired: str | None
    thresholds: Annotated[dict[str, float | None], Field(description="The thresholds of the operating point that decided.")]
    priority: list[str] | None
    conflict: str | None
    operating_point: Annotated[str, Field(
        description="Whose temperature and thresholds decided, in words: with metadata, or without metadata "
        "(fitted on validation with the metadata hidden; used when the image came without any metadata value).",
    )]
    operating_point_name: Annotated[str, Field(description="with_metadata or without_metadata.")]


class Review(TypedDict):
    """The review flag: the bundle's threshold on an MC-dropout score, fitted on validation."""

    flag: Annotated[bool | None, Field(description="True: refer for review (uncertain); None: the bundle has no review threshold.")]
    score: NotRequired[str]
    value: NotRequired[float | None]
    threshold: NotRequired[float | None]
    goal: NotRequired[str]
    operating_point: NotRequired[Annotated[str, Field(description="The operating point whose threshold flagged.")]]
    fitted_on: NotRequired[str]
    note: NotRequired[Annotated[str, Field(description="Why there is no flag (flag None).")]]


class Uncertainty(TypedDict):
    """MC-dropout uncertainty (nats): predictive entropy = aleatoric + epistemic part, and the review flag."""

    method: str
    n_samples: int
    units: str
    mean_probabilities: dict[str, float]
    predictive_entropy: float | None
    aleatoric_expected_entropy: float | None
    epistemic_mutual_information: float | None
    review: Review
    stochastic: Annotated[bool, Field(description="False: the model has no active dropout (the passes are identical).")]
    max_probability: float | None
    warnings: list[str]


class MetadataInfo(TypedDict):
    """The patient metadata a prediction used."""

    used: Annotated[dict[str, Any] | None, Field(
        description="The normalised age, sex and site the metadata fusion members received (null: missing); null when none was given."
    )]
    members_using_metadata: Annotated[list[str], Field(description="Members that take metadata (empty: image-only bundle).")]
    features: Annotated[list[str], Field(description="The metadata fields this bundle's members use.")]
    ignored: NotRequired[Annotated[dict[str, str], Field(description="Given but not used, and why (e.g. a site never seen in training).")]]


class Conversion(TypedDict):
    """How a file that was not upright 8-bit RGB became the RGB image the model saw
    (:mod:`skinlesion.delivery.images`)."""

    mode: Annotated[str, Field(description="The file's Pillow mode: CMYK, RGBA, P, L, I;16, ... (RGB: only oriented).")]
    format: Annotated[str | None, Field(description="The file format: JPEG, PNG, GIF, TIFF, ...")]
    steps: Annotated[list[str], Field(description="What was done, in order, in words (e.g. 'CMYK to sRGB through the embedded ICC profile').")]


class PredictionRecord(TypedDict):
    """One image's prediction: what ``predict`` writes, ``serve`` answers and the audit log keeps."""

    notice: str
    bundle: BundleRef
    converted_from: NotRequired[Annotated[Conversion | None, Field(
        description="What the file was and how it was converted to 8-bit RGB (orientation, colour space, alpha, "
        "bit depth); null: it was upright 8-bit RGB. Set by predict and serve, which decode files.",
    )]]
    prediction: Prediction
    uncertainty: Annotated[Uncertainty | None, Field(description="MC-dropout uncertainty; None when the MC-dropout passes are 0.")]
    metadata: Annotated[MetadataInfo, Field(description="The patient metadata used (age, sex, site).")]
    ood: Annotated[OutOfDistribution | None, Field(description="The out-of-distribution gate; None when the bundle has none.")]


class Explanation(PredictionRecord):
    """A prediction record plus where the model looked and what the lesion measures.

    ``cam_png``, ``mask_png`` (the REST service's ``/explain``) and ``input`` (the CLI and the batch
    reports: path, sha256, shape, image id) are added by the output that has them."""

    attention: Annotated[dict[str, Any], Field(description="CAM method and layers, class explained, share of the map inside the lesion, and the measured faithfulness of that map (faithfulness.line).")]
    segmentation: dict[str, Any]
    abcde: Annotated[dict[str, Any] | None, Field(description="ABCDE measurements; None when no lesion was segmented.")]
    dermoscopy_score: Annotated[dict[str, Any] | None, Field(description="Total Dermoscopy Score (ABCD rule).")]
    cam_png: NotRequired[Annotated[str, Field(description="Base64 PNG: the CAM over the image.")]]
    mask_png: NotRequired[Annotated[str, Field(description="Base64 PNG: the lesion segmentation outlined over the image (same size).")]]
    concepts: Annotated[dict[str, Any] | None, Field(description="TCAV concept sensitivities; None when not asked for.")]
    skinlesion_version: str
    input: NotRequired[dict[str, Any]]


# -- follow-up comparison of two images of one lesion (``skinlesion compare``, ``POST /compare``) --------------
class ComparedImage(TypedDict):
    """One visit of a comparison: the image, its prediction record, segmentation and ABCDE."""

    input: Annotated[dict[str, Any], Field(description="name (or path), sha256, width, height of the image.")]
    pixel_spacing_mm: Annotated[float | None, Field(description="mm per pixel of this image; null: unknown.")]
    record: Annotated[PredictionRecord | None, Field(description="The model's prediction record of this image; null without a model.")]
    segmentation: dict[str, Any]
    abcde: Annotated[dict[str, Any] | None, Field(description="ABCDE of this image; null when no lesion was segmented.")]


class RegistrationInfo(TypedDict):
    """How the later image was registered onto the earlier one, and how well they fit."""

    method: str
    rotation_deg: float
    scale: Annotated[float, Field(description="Before-pixels per after-pixel (the spacing ratio when both spacings are known).")]
    translation_px: list[float]
    scale_source: Annotated[str, Field(description="pixel spacings, or estimated (then an apparent magnification ratio).")]
    matrix: Annotated[list[list[float]], Field(description="3x3 matrix: after (x, y, 1) to before (x, y, 1), x = column.")]
    ncc: Annotated[float, Field(description="Normalised cross-correlation of the registered images (band-passed lightness).")]
    ncc_unregistered: Annotated[float | None, Field(description="The same for the images as given (same size only).")]
    overlap: Annotated[float, Field(description="Area both registered images show, as a fraction of the smaller one.")]
    mask_dice: Annotated[float | None, Field(description="Dice overlap of the two segmentations once registered.")]
    fit: Annotated[str, Field(description="good or poor (fit_rule).")]
    fit_rule: str


class ChangeCriterion(TypedDict):
    """One criterion of the change rule, with its value on this pair."""

    name: Annotated[str, Field(description="growth, new_colour or asymmetry.")]
    description: str
    value: float | None
    threshold: float
    assessed: Annotated[bool, Field(description="False: not measurable here (growth without pixel spacings).")]
    fired: Annotated[bool | None, Field(description="The value reached the threshold; null when not assessed.")]
    detail: str


class ChangeSummary(TypedDict):
    """Significant change or not, by the measured rule, in words and per criterion."""

    verdict: Annotated[str, Field(description="significant change, no significant change, or not assessed.")]
    significant: bool | None
    criteria: list[ChangeCriterion]
    rule: Annotated[str, Field(description="The rule in words.")]
    rule_chosen: Annotated[str, Field(description="How its thresholds were chosen (measurement and where it is recorded).")]
    thresholds: dict[str, float]
    caveats: list[str]
    text: Annotated[str, Field(description="A plain summary of the verdict.")]


class ModelChange(TypedDict):
    """How the model's output changed from the first image to the second."""

    probabilities: Annotated[dict[str, dict[str, float]], Field(description="Per class: before, after, change (after - before).")]
    decision: dict[str, Any]
    review_flag: dict[str, Any]
    changed_fields: Annotated[list[dict[str, Any]], Field(
        description="Every decision, flag or category of the two records that differs: field (dotted path), before, after."
    )]


class Comparison(TypedDict):
    """Two images of one lesion at two visits: what changed, and whether the change is significant."""

    notice: str
    before: ComparedImage
    after: ComparedImage
    registration: RegistrationInfo
    evolution: Annotated[dict[str, Any] | None, Field(description="ABCDE change (E of ABCDE); null when a lesion was not found.")]
    summary: ChangeSummary
    model: Annotated[ModelChange | None, Field(description="Change of the model's probabilities and flags; null without a model.")]
    bundle: Annotated[BundleRef | None, Field(description="The model that predicted both images; null without a model.")]
    skinlesion_version: str
