"""``skinlesion explain IMAGE...`` plus the dataset-level sub-commands (faithfulness, concepts, review)."""

from __future__ import annotations

from pathlib import Path

import click
import typer
from typer.core import TyperGroup

from skinlesion.cli._common import console, user_errors
from skinlesion.cli.explain_concepts import concepts_command
from skinlesion.cli.explain_eval import faithfulness_command, review_command


class _ImageDefaultGroup(TyperGroup):
    """``skinlesion explain a.jpg`` runs the ``image`` sub-command: a first argument that is not a
    sub-command name is taken as an image path."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["image", *args]
        return super().parse_args(ctx, args)


explain_app = typer.Typer(
    cls=_ImageDefaultGroup,
    help="Explain predictions: `explain IMAGE...` (maps, ABCDE, concepts, uncertainty) or a dataset-level check.",
    no_args_is_help=True,
)


@explain_app.command("image")
def image_command(
    images: list[Path] = typer.Argument(..., help="Image files (JPEG/PNG...)."),
    bundle: str | None = typer.Option(
        None, "--bundle", "-b", help="Decision bundle folder, or 'default' (the packaged bundle; also used without --bundle/--checkpoint)."
    ),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c", help="A checkpoint instead of a bundle."),
    out: Path = typer.Option(Path("explanations"), "--out", "-o", help="Output folder."),
    cls: str | None = typer.Option(None, "--class", help="Class to explain (default: the decision)."),
    method: str | None = typer.Option(
        None, "--method", help="gradcam, gradcam++, layercam, hirescam or eigencam (default: the backbone's measured default)."
    ),
    cam_tta: str = typer.Option("identity", "--cam-tta", help="Views to smooth the map over, e.g. d4 (de-augmented)."),
    mc_samples: int | None = typer.Option(
        None, "--mc-samples", min=0, help="MC-dropout passes (default: as the bundle's review flag was fitted, else 20; 0: skip)."
    ),
    pixel_spacing_mm: float | None = typer.Option(None, "--pixel-spacing-mm", help="mm per pixel; without it sizes stay in pixels."),
    age: str | None = typer.Option(None, "--age", help="Patient age in years (optional metadata, for every image given)."),
    sex: str | None = typer.Option(None, "--sex", help="male or female (optional metadata)."),
    site: str | None = typer.Option(None, "--site", help="Anatomical site, e.g. back, face, lower extremity (optional metadata)."),
) -> None:
    """Write <name>.json (prediction, attention, ABCDE, concepts, uncertainty) and overlay PNGs per image.

    Metadata fusion members use --age/--sex/--site when given (missing otherwise); <name>.json says what was used."""
    from skinlesion.ensemble.bundle import load_model_source
    from skinlesion.explain.pipeline import write_explanation

    with user_errors():
        from skinlesion.records.metadata import normalise_metadata

        metadata = normalise_metadata({"age": age, "sex": sex, "site": site}, "the command line")  # checked before loading
        model = load_model_source(bundle=bundle, checkpoint=checkpoint, use_default=True)
        for path in images:
            r = write_explanation(
                model, path, out, class_name=cls, method=method, cam_views=cam_tta, mc_samples=mc_samples,
                pixel_spacing_mm=pixel_spacing_mm, metadata=metadata,
            )
            p = r["prediction"]
            a = r["abcde"]
            if a is None:
                abcde = "ABCDE: no lesion found by the segmentation"
            else:
                diameter = f"{a['diameter_mm']:.1f} mm" if a.get("diameter_mm") is not None else f"{a['diameter_px']:.0f} px (spacing unknown)"
                abcde = (
                    f"ABCDE: {a['asymmetric_axes']} asymmetric axes, {a['abrupt_border_sectors']}/8 abrupt sectors, "
                    f"colours {', '.join(a['colours']) or 'none'}, diameter {diameter}"
                )
            u = r["uncertainty"] or {}
            flag = (u.get("review") or {}).get("flag")
            console.print(
                f"{path.name}: decision {p['decision']} ({p['decided_by']}); p={p['probabilities'][p['decision']]:.3f}; "
                f"{abcde}; "
                + (f"epistemic {u['epistemic_mutual_information']:.3f} nats" if u else "no uncertainty")
                + ("; REVIEW" if flag else "")
            )
    console.print(f"explanations in {out}")


explain_app.command("faithfulness")(faithfulness_command)
explain_app.command("review")(review_command)
explain_app.command("concepts")(concepts_command)
