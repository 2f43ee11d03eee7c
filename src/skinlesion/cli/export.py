"""``skinlesion export onnx``: a bundle's members as ONNX graphs for ``--engine onnx``."""

from __future__ import annotations

from pathlib import Path

import typer

from skinlesion.cli._common import console, user_errors

export_app = typer.Typer(help="Export a decision bundle for other runtimes.", no_args_is_help=True)


@export_app.command("onnx")
def onnx_command(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: BUNDLE/onnx)."),
    int8: bool = typer.Option(False, "--int8", help="Also write static INT8 (QDQ) graphs, calibrated on validation images."),
    calibration: int = typer.Option(64, "--calibration", min=1, help="Validation images for INT8 calibration."),
    data_root: str | None = typer.Option(None, "--data-root", help="Dataset folder, if it moved since training."),
    opset: int = typer.Option(20, "--opset", min=18, help="ONNX opset."),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Largest fp32 probability difference from PyTorch accepted."),
    share_weights: bool = typer.Option(
        False, "--share-weights",
        help="fp32 graphs without a copy of the members' weights (kB instead of MB; filled in from the members when "
        "loaded, so they run only inside skinlesion).",
    ),
) -> None:
    """Export every member (network only, dynamic batch); pre/post-processing stays in bundle.json."""
    from skinlesion.delivery.onnx_export import export_bundle_onnx
    from skinlesion.delivery.onnx_runtime import read_manifest
    from skinlesion.ensemble.bundle import load_bundle

    with user_errors():
        b = load_bundle(bundle)
        folder = export_bundle_onnx(
            b, out, int8=int8, opset=opset, n_calibration=calibration, data_root=data_root, tolerance=tolerance,
            share_weights=share_weights,
        )
        manifest = read_manifest(folder)
    p = manifest["parity"]
    console.print(f"parity with PyTorch on {p['n_images']} images x {len(manifest['tta_views'])} TTA views; images: {p['images']}")
    for m in manifest["members"]:
        takes = " + metadata" if m.get("metadata") else ""
        console.print(f"{m['name']}  input {m['input_size'][0]}x{m['input_size'][1]}{takes}")
        for prec, r in m["parity"].items():
            cases = r.get("metadata") or {}
            split = "".join(f"  {c}: {d['max_abs_prob_diff']:.2e}" for c, d in cases.items())
            console.print(
                f"  {prec}  max |dp| {r['max_abs_prob_diff']:.2e}{f' (metadata{split})' if split else ''}"
                f"  argmax agreement {r['argmax_agreement']:.3f}"
            )
        console.print(f"  files: {', '.join(m['files'])}", soft_wrap=True)
    q = manifest.get("quantisation")
    if q:
        c = q["calibration_source"]
        console.print(f"int8 calibrated on {c['n_images']} images ({c['source']})")
    use = "predict and serve use it by default" if out is None else f"use with --onnx-dir {folder}"
    console.print(f"written: {folder}  ({use}{'; int8: --precision int8' if int8 else ''})", soft_wrap=True)
