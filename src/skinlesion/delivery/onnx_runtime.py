"""Run a decision bundle's members on ONNX Runtime (files written by ``skinlesion export onnx``).

The ONNX graphs are the networks only: input ``"input"`` ``(batch, 3, H, W)`` float32, already
resized and normalised as the member's ``preprocessing`` says; output ``"logits"`` ``(batch, K)``
and, since manifest format 3, ``"features"`` ``(batch, F)``: the pooled image features of the same
pass, which the bundle's out-of-distribution gate reads (:meth:`OnnxEngine.view_logits_and_features`
gives them for the identity view, so the gate costs no second pass; an export of format 2 or older
has no such output and the gate then runs its members in PyTorch).
Resizing, normalisation and the TTA views run here exactly as in PyTorch (the member's own
preprocessing, then :func:`skinlesion.inference.tta.apply_view` on the tensor); temperatures,
member weights, thresholds and the decision rule stay in ``bundle.json`` and are applied by
:meth:`~skinlesion.ensemble.bundle.Bundle.predict_from_logits`, the same code for both engines.

Spatial axes are static. A non-square member whose TTA views swap height and width (rot90,
rot270, transpose, transverse) has a second graph for the transposed shape ``(W, H)``: exporting
with dynamic height and width took ~15x longer (TF "same" padding becomes symbolic) for no gain,
since a member only ever sees these two shapes.

:class:`OnnxEngine` refuses files that do not belong to the bundle: a missing folder or
manifest, members or member weights other than the bundle's (``bundle_id`` may differ: a
recalibrated bundle keeps its graphs), a file whose sha256 changed, or a precision that was not
exported. Each error names the file and the command that fixes it.

A *shared-weight* graph (``export onnx --share-weights``; manifest file record ``"weights":
"member"``) holds no copy of its member's parameters and buffers: they are filled in from the
member's loaded ``state_dict`` (whose weight hash the manifest checks) when the session is built
(:func:`graph_with_weights`), batch norms unfolded, which ONNX Runtime folds into the convolutions
itself. The shipped default bundle carries such graphs: kilobytes, not a second copy of its weights.

A metadata fusion member (:class:`~skinlesion.models.fusion.MetadataFusionNet`) is exported with a
second input ``"metadata"`` ``(batch, D)`` float32 (manifest format 2, the member's ``inputs``): the
engine encodes each image's record with the member's own ``encode_metadata`` (the all-missing
encoding for an image without metadata, what ``model(x)`` gives) and repeats it for every view,
view-major, as :func:`~skinlesion.inference.tta.tta_logits` does. An export of format 1 holds
image-only graphs: for a bundle with fusion members the engine then refuses metadata
(:class:`~skinlesion.delivery.metadata.MetadataUnsupportedError`, naming the command that
re-exports) and its graphs give the "metadata missing" prediction. Either way an image is decided
by the bundle's without-metadata operating point when no fusion member receives a metadata value
(:meth:`~skinlesion.ensemble.bundle.Bundle.metadata_given`, as on the torch engine).
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skinlesion._hashing import sha256_file
from skinlesion.ensemble.bundle import Bundle
from skinlesion.errors import SkinLesionError
from skinlesion.inference.onnx_graph import FEATURES, INPUT, METADATA, OUTPUT, providers, session_options
from skinlesion.inference.tta import SWAPS_AXES, forward_views, view_groups

FORMAT = "skinlesion-onnx"
#: 3: graphs output FEATURES beside the logits; 2: fusion members' graphs take a second input, METADATA;
#: 1: image-only graphs
FORMAT_VERSION = 3
MANIFEST = "onnx.json"
DEFAULT_DIR = "onnx"
PRECISIONS = ("fp32", "int8")
#: Graph metadata key of a shared-weight graph (``export onnx --share-weights``): JSON ``{name: shape}``
#: of the initializers left out of the file, the member's own ``state_dict`` tensors.
WEIGHTS_KEY = "skinlesion.member_weights"

#: Runs a graph on normalised rows ``(R, 3, H, W)`` and, for a graph with a metadata input, their
#: encoded metadata ``(R, D)`` (None for an image-only graph); returns the outputs it was made for,
#: ``R`` rows each (:func:`session_runner`).
RunFn = Callable[[np.ndarray, np.ndarray | None], Sequence[np.ndarray]]


class OnnxError(SkinLesionError, ValueError):
    """ONNX files are missing, stale (another bundle, changed files) or lack a precision."""


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"The 'precision' parameter must be one of {PRECISIONS}. Got {precision!r} instead.")
    return precision


def file_stem(member_name: str) -> str:
    """A member name made safe as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", member_name).strip("._") or "member"


def default_onnx_dir(bundle: Bundle) -> Path:
    if bundle.path is None:
        raise OnnxError("This bundle is not saved in a folder (a wrapped checkpoint): give the ONNX folder explicitly.")
    return bundle.path / DEFAULT_DIR


def export_command(bundle: Bundle, onnx_dir: Path, precision: str = "fp32") -> str:
    """The command that (re)writes ``onnx_dir`` for this bundle (quoted in error messages)."""
    where = str(bundle.path) if bundle.path is not None else "BUNDLE"
    out = "" if bundle.path is not None and onnx_dir == bundle.path / DEFAULT_DIR else f" --out {onnx_dir}"
    return f"skinlesion export onnx {where}{out}" + (" --int8" if precision == "int8" else "")


def read_manifest(onnx_dir: str | Path) -> dict[str, Any]:
    """The ``onnx.json`` of an export folder (format checked)."""
    path = Path(onnx_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise OnnxError(f"{path} is missing") from None
    except json.JSONDecodeError as e:
        raise OnnxError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise OnnxError(f"{path}: field 'format' must be {FORMAT!r}, got {manifest.get('format')!r}")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise OnnxError(f"{path}: format_version {manifest['format_version']} is newer than this package supports ({FORMAT_VERSION})")
    return manifest


def graph_shapes(input_size: Sequence[int], views: Sequence[str]) -> list[tuple[int, int]]:
    """Input shapes ``(H, W)`` a member's graphs need under ``views``: its own, and ``(W, H)`` when
    it is not square and a view swaps the axes (rot90, rot270, transpose, transverse)."""
    h, w = (int(v) for v in input_size)
    if h == w:
        return [(h, w)]
    same, swapped = any(v not in SWAPS_AXES for v in views), any(v in SWAPS_AXES for v in views)
    return [s for s, needed in (((h, w), same), ((w, h), swapped)) if needed]


def run_views(
    x: torch.Tensor, views: Sequence[str], run: Callable[[tuple[int, int]], RunFn], *, max_rows: int | None = None,
    meta: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Every output of ``run`` for every view of a normalised batch ``x`` ``(N, 3, h, w)``: one float32
    array ``(N, V, ...)`` per output, in the runner's order (logits ``(N, V, K)`` first).

    ``run(shape)`` returns the function that runs the graph for inputs of spatial ``shape``. Views
    of one shape go through one call, at most ``max_rows`` rows (whole views) at a time: the view
    batching of :func:`skinlesion.inference.tta.forward_views`, as PyTorch runs them. ``meta``
    ``(N, D)``: encoded metadata for a graph with a metadata input, repeated for every view (rows
    are view-major); None for an image-only graph.
    """

    def forward(rows: torch.Tensor, n_views: int) -> list[torch.Tensor]:
        meta_rows = None if meta is None else np.tile(meta, (n_views, 1))
        shape = (int(rows.shape[-2]), int(rows.shape[-1]))
        results = run(shape)(rows.contiguous().numpy().astype(np.float32, copy=False), meta_rows)
        return [torch.from_numpy(np.asarray(r)) for r in results]

    with torch.inference_mode():
        return [z.numpy().astype(np.float32, copy=False) for z in forward_views(x, views, max_rows, forward)]


def preprocessed(members: Sequence[Any], images: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """Each member's normalised batch of ``images`` (:meth:`~skinlesion.ensemble.members.Member.preprocess`),
    computed once per distinct ``preprocessing`` (members trained alike share it)."""
    done: dict[str, torch.Tensor] = {}
    out = []
    for m in members:
        key = json.dumps(m.preprocessing, sort_keys=True, default=str)
        if key not in done:
            done[key] = m.preprocess(images, "cpu")
        out.append(done[key])
    return out


def graph_with_weights(proto: Any, state_dict: Mapping[str, torch.Tensor], where: str) -> Any:
    """A shared-weight graph (:data:`WEIGHTS_KEY`) with its member's tensors filled in as float32
    initializers; ``where`` names the file in errors. A graph without the key is returned as is."""
    from onnx import numpy_helper

    listed = {e.key: e.value for e in proto.metadata_props}.get(WEIGHTS_KEY)
    if listed is None:
        return proto
    for name, shape in json.loads(listed).items():
        tensor = state_dict.get(name)
        if tensor is None or list(tensor.shape) != list(shape):
            got = "missing" if tensor is None else f"shape {list(tensor.shape)}"
            raise OnnxError(f"{where}: the graph takes the member's tensor {name!r} of shape {shape}, the member's is {got}")
        proto.graph.initializer.append(numpy_helper.from_array(tensor.detach().cpu().float().numpy(), name))
    return proto


def make_session(path: str | Path, threads: int | None = None, *, weights: Mapping[str, torch.Tensor] | None = None) -> Any:
    """An ``InferenceSession`` with ``threads`` intra-op threads (default ``torch.get_num_threads()``).

    ``weights``: the member's ``state_dict`` for a shared-weight graph (see :func:`graph_with_weights`);
    the filled graph is built in memory, the file stays as exported."""
    import onnxruntime as ort

    opts = session_options(threads)
    if weights is None:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers())
    import onnx

    model = graph_with_weights(onnx.load(str(path)), weights, str(path))
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=providers())


def session_runner(session: Any, outputs: Sequence[str] = (OUTPUT,)) -> RunFn:
    """A :data:`RunFn` of ``session`` that returns ``outputs`` (default: the logits only)."""
    names = list(outputs)

    def run(batch: np.ndarray, meta: np.ndarray | None = None) -> Sequence[np.ndarray]:
        feed = {INPUT: batch} if meta is None else {INPUT: batch, METADATA: meta.astype(np.float32, copy=False)}
        return session.run(names, feed)

    return run


def graph_inputs(entry: Mapping[str, Any]) -> list[str]:
    """The input names of a manifest member's graphs (format 1 manifests: the image only)."""
    return [str(v) for v in entry.get("inputs", [INPUT])]


def graph_outputs(entry: Mapping[str, Any]) -> list[str]:
    """The output names of a manifest member's graphs (before format 3: the logits only)."""
    return [str(v) for v in entry.get("outputs", [OUTPUT])]


def encoded_metadata(member: Any, metadata: Sequence[Mapping[str, Any]] | None, n: int) -> np.ndarray:
    """``(n, D)`` float32: the member's own encoding of ``metadata`` (None: all missing), as the
    torch path feeds ``model(x, meta)``."""
    with torch.inference_mode():
        return member.model.encode_metadata(metadata, n).detach().cpu().numpy().astype(np.float32, copy=False)


class OnnxEngine:
    """Bundle members on ONNX Runtime, one ``InferenceSession`` per member graph.

    ``view_logits`` returns what :class:`~skinlesion.delivery.engine.TorchEngine` returns (member
    view logits ``M x (N, V, K)``, bundle member order), so the bundle's post-processing is shared.
    Safe for concurrent calls: sessions are thread-safe and no state changes per call.
    """

    name = "onnx"

    def __init__(
        self, bundle: Bundle, onnx_dir: str | Path | None = None, precision: str = "fp32", threads: int | None = None
    ) -> None:
        from skinlesion.ensemble.predict import CPU_MAX_ROWS

        self.bundle = bundle
        self.precision = check_precision(precision)
        self.onnx_dir = Path(onnx_dir) if onnx_dir is not None else default_onnx_dir(bundle)
        self.threads = int(threads or torch.get_num_threads())
        self.manifest = self._checked_manifest()
        files = self._checked_files()
        self.providers = providers()
        #: Members run side by side on the CPU, one thread each (a member's graphs at batch 1 are too
        #: small to keep several intra-op threads busy), in units of one member and one input shape
        #: (:attr:`tasks`); on a GPU, one after the other.
        cpu = self.providers[0] != "CUDAExecutionProvider"
        #: Units of work of one prediction: ``(member index, view indices)``, the views of one input
        #: shape of one member (two per non-square member under D4 TTA): five members on two threads
        #: split 5:5 graph calls instead of 3:2 members.
        self.tasks: list[tuple[int, list[int]]] = [
            (i, group)
            for i, m in enumerate(bundle.members)
            for group in view_groups(bundle.tta.views, m.input_size[0] == m.input_size[1])
        ]
        self.member_workers = min(self.threads, len(self.tasks)) if cpu else 1
        per_session = max(1, self.threads // self.member_workers)
        self._pool = ThreadPoolExecutor(self.member_workers, thread_name_prefix="onnx-member") if self.member_workers > 1 else None
        #: The pool's threads end with :meth:`close` or when the engine is garbage collected (a server
        #: that swaps its bundle must not keep the old engine's idle threads).
        self._close_pool = weakref.finalize(self, self._pool.shutdown, wait=False) if self._pool is not None else None
        self.sessions: list[dict[tuple[int, int], Any]] = [
            {
                shape: make_session(path, per_session, weights=member.model.state_dict() if shared else None)
                for shape, (path, shared) in member_files.items()
            }
            for member, member_files in zip(bundle.members, files, strict=True)
        ]
        #: Per member: whether its graphs take the encoded metadata as a second input.
        self.takes_metadata: list[bool] = [METADATA in graph_inputs(e) for e in self.manifest["members"]]
        #: Per member: whether its graphs also output the pooled image features (format 3).
        self.gives_features: list[bool] = [FEATURES in graph_outputs(e) for e in self.manifest["members"]]
        self._check_sessions()
        self.max_rows = CPU_MAX_ROWS if cpu else None

    def close(self) -> None:
        """End the member threads now (call it when no prediction is running); the engine stays usable and
        runs its members one after the other."""
        if self._close_pool is not None:
            self._close_pool()
        self._pool = None

    @property
    def accepts_metadata(self) -> bool:
        """Whether every metadata fusion member's graphs take the metadata (format 2 exports; True
        for a bundle without fusion members). False for a format 1 export of a fusion bundle."""
        return not self.image_only_fusion_members()

    def image_only_fusion_members(self) -> list[str]:
        """Names of the fusion members whose graphs take the image only (exported before format 2)."""
        from skinlesion.records.metadata import encoder_of

        members = zip(self.bundle.members, self.takes_metadata, strict=True)
        return [m.name for m, takes in members if encoder_of(m) is not None and not takes]

    def metadata_fix(self) -> str:
        """What a user does to serve metadata on ONNX: the re-export command."""
        return f"re-export with `{export_command(self.bundle, self.onnx_dir)}` (graphs that take the metadata), "

    # -- checks --------------------------------------------------------------------------------
    def _fix(self) -> str:
        return f"run `{export_command(self.bundle, self.onnx_dir, self.precision)}`"

    def _checked_manifest(self) -> dict[str, Any]:
        d = self.onnx_dir
        if not d.is_dir():
            raise OnnxError(f"ONNX folder {d} does not exist: {self._fix()} first")
        if not (d / MANIFEST).is_file():
            raise OnnxError(f"{d / MANIFEST} is missing: {self._fix()} first")
        manifest = read_manifest(d)
        names = [m.get("name") for m in manifest.get("members", [])]
        if names != [m.name for m in self.bundle.members]:
            have = [m.name for m in self.bundle.members]
            raise OnnxError(f"{d / MANIFEST} holds members {names}, the bundle {have}: {self._fix()} again")
        # The graphs hold only the networks: a recalibrated bundle (thresholds, temperatures,
        # weights in bundle.json) keeps them; other member weights or input sizes do not.
        for member, entry in zip(self.bundle.members, manifest["members"], strict=True):
            if entry.get("weights_sha256") != member.meta.get("weights_sha256"):
                raise OnnxError(
                    f"{d / MANIFEST}: member {member.name!r} was exported from weights "
                    f"{str(entry.get('weights_sha256'))[:12]}..., the bundle's are "
                    f"{str(member.meta.get('weights_sha256'))[:12]}...: {self._fix()} again"
                )
            if [int(v) for v in entry.get("input_size", [])] != list(member.input_size):
                raise OnnxError(
                    f"{d / MANIFEST}: member {member.name!r} was exported for input {entry.get('input_size')}, the "
                    f"bundle's preprocessing says {list(member.input_size)}: {self._fix()} again"
                )
            self._check_metadata_entry(member, entry)
        if self.precision not in manifest.get("precisions", []):
            raise OnnxError(
                f"{d / MANIFEST}: precision {self.precision!r} was not exported (it has {manifest.get('precisions')}): {self._fix()}"
            )
        return manifest

    def _check_metadata_entry(self, member: Any, entry: Mapping[str, Any]) -> None:
        """A graph with a metadata input must encode what the member's encoder encodes."""
        from skinlesion.records.metadata import encoder_of

        inputs, encoder, where = graph_inputs(entry), encoder_of(member), self.onnx_dir / MANIFEST
        if inputs not in ([INPUT], [INPUT, METADATA]):
            raise OnnxError(
                f"{where}: member {member.name!r} has graph inputs {inputs}, expected {[INPUT]} or {[INPUT, METADATA]}: {self._fix()} again"
            )
        if METADATA not in inputs:
            return
        names = list((entry.get("metadata") or {}).get("feature_names", []))
        if encoder is None or names != list(encoder.feature_names_):
            have = list(encoder.feature_names_) if encoder is not None else None
            raise OnnxError(
                f"{where}: member {member.name!r} was exported with metadata features {names}, the bundle's member "
                f"encodes {have}: {self._fix()} again"
            )

    def _checked_files(self) -> list[dict[tuple[int, int], tuple[Path, bool]]]:
        """Per member and input shape: the graph file and whether it takes the member's weights
        (a shared-weight graph: the member's weights were checked against the manifest above)."""
        d, views = self.onnx_dir, self.bundle.tta.views
        out = []
        for member, entry in zip(self.bundle.members, self.manifest["members"], strict=True):
            graphs = {tuple(int(v) for v in g["input_size"]): g for g in entry["graphs"]}
            files: dict[tuple[int, int], tuple[Path, bool]] = {}
            for shape in graph_shapes(member.input_size, views):
                g = graphs.get(shape)
                if g is None or self.precision not in g["files"]:
                    raise OnnxError(
                        f"{d / MANIFEST}: member {member.name!r} has no {self.precision} graph for input {shape}: {self._fix()}"
                    )
                rec = g["files"][self.precision]
                path = d / rec["file"]
                if not path.is_file():
                    raise OnnxError(f"{path} (listed in {d / MANIFEST}) is missing: {self._fix()}")
                if sha256_file(path) != rec["sha256"]:
                    raise OnnxError(f"{path}: sha256 differs from {d / MANIFEST} (the file changed after export): {self._fix()}")
                files[shape] = (path, rec.get("weights") == "member")
            out.append(files)
        return out

    def _check_sessions(self) -> None:
        """Each graph's inputs and outputs are what the manifest says (a hand-edited manifest cannot mislead)."""
        for member, entry, sessions in zip(self.bundle.members, self.manifest["members"], self.sessions, strict=True):
            for shape, session in sessions.items():
                for what, got, want in (
                    ("inputs", [i.name for i in session.get_inputs()], graph_inputs(entry)),
                    ("outputs", [o.name for o in session.get_outputs()], graph_outputs(entry)),
                ):
                    if got != want:
                        raise OnnxError(
                            f"{self.onnx_dir / MANIFEST}: member {member.name!r}'s graph for input {shape} has {what} {got}, "
                            f"the manifest says {want}: {self._fix()} again"
                        )

    # -- running -------------------------------------------------------------------------------
    def member_view_logits(
        self, index: int, images: Sequence[np.ndarray], metadata: Sequence[Mapping[str, Any]] | None = None,
        *, features: bool = False, views: Sequence[int] | None = None, batch: torch.Tensor | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(N, V, K)`` logits of member ``index`` for RGB uint8 images (and metadata records, None:
        all missing; used only by a graph with a metadata input) and, with ``features`` when its graphs
        output them, the pooled image features ``(N, V, F)`` of the same pass (else None).

        ``views``: indices into the bundle's TTA views (default all; ``V`` is their number);
        ``batch``: the images already through the member's preprocessing (default: done here)."""
        member, sessions = self.bundle.members[index], self.sessions[index]
        x = member.preprocess(images, "cpu") if batch is None else batch
        meta = encoded_metadata(member, metadata, len(images)) if self.takes_metadata[index] else None
        outputs = (OUTPUT, FEATURES) if features and self.gives_features[index] else (OUTPUT,)
        all_views = self.bundle.tta.views
        names = all_views if views is None else [all_views[j] for j in views]
        got = run_views(x, names, lambda shape: session_runner(sessions[shape], outputs), max_rows=self.max_rows, meta=meta)
        return got[0], got[1] if len(got) > 1 else None

    def view_logits(
        self, images: Sequence[np.ndarray], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> list[np.ndarray]:
        """Member view logits ``M x (N, V, K)`` for RGB uint8 images, in the bundle's member order.

        ``metadata``: one record per image (None: all missing), fed to graphs with a metadata input;
        refused when a fusion member's graphs take the image only (a format 1 export)."""
        return self.view_logits_and_features(images, metadata)[0]

    def view_logits_and_features(
        self, images: Sequence[np.ndarray], metadata: Sequence[Mapping[str, Any]] | None = None,
        features_of: Sequence[str] = (),
    ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """:meth:`view_logits`, plus the pooled image features ``(N, F)`` of the identity view of each
        member named in ``features_of`` whose graphs output them (format 3), by member name: what the
        out-of-distribution gate reads (:func:`~skinlesion.records.ood.ood_records`), from the same pass."""
        if metadata is not None:
            if len(metadata) != len(images):
                raise ValueError(
                    f"The 'metadata' parameter must hold one record per image ({len(images)}). Got {len(metadata)} instead."
                )
            image_only = self.image_only_fusion_members()
            if image_only:
                from skinlesion.delivery.metadata import MetadataUnsupportedError

                raise MetadataUnsupportedError(
                    f"the ONNX graphs in {self.onnx_dir} take the image only (exported before graphs took metadata), but "
                    f"members {image_only} of this bundle use patient metadata: {self.metadata_fix()}use the torch "
                    "engine, or leave the metadata out"
                )
        views = list(self.bundle.tta.views)
        identity = views.index("identity") if "identity" in views else None
        members = self.bundle.members
        batches = preprocessed(members, images)

        def task(t: tuple[int, list[int]]) -> tuple[np.ndarray, np.ndarray | None]:
            i, group = t
            features = members[i].name in features_of and identity in group
            return self.member_view_logits(i, images, metadata, features=features, views=group, batch=batches[i])

        pool = self._pool
        results = [task(t) for t in self.tasks] if pool is None else list(pool.map(task, self.tasks))
        logits: list[np.ndarray | None] = [None] * len(members)
        features: dict[str, np.ndarray] = {}
        for (i, group), (z, f) in zip(self.tasks, results, strict=True):
            if logits[i] is None:
                logits[i] = np.empty((z.shape[0], len(views), *z.shape[2:]), dtype=z.dtype)
            logits[i][:, group] = z  # type: ignore[index]
            if f is not None:
                features[members[i].name] = f[:, group.index(identity)]
        return logits, features  # type: ignore[return-value]
