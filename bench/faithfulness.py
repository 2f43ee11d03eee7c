"""Faithfulness of a bundle's (or checkpoint's) CAMs over a split; prints one JSON object.

    python bench/faithfulness.py runs/some-bundle --n 100
    python bench/faithfulness.py runs/cpu-ham10000-lite0/checkpoint --n 100 --mask-source bbox

Deletion/insertion (Petsiuk et al. 2018) of the ensemble's CAM (registry default) of its predicted class, in
the original image space, against random maps; and the CAM mass inside the lesion (true masks,
HAM10000_metadata_ext.csv boxes or the classical segmentation) against the lesion's area fraction.
One image per lesion, stratified by class; intervals resample lesions. See
``skinlesion.explain.faithfulness_split.faithfulness_over_split``. ``--records`` keeps the per-image rows.

``--compare`` scores several attention-map configurations on the same images (paired; shared
random maps; box and segmentation masks) and names the best one that beats random maps on
deletion and insertion and puts more mass in the lesion than its area fraction
(``skinlesion.explain.faithfulness_compare``):

    python bench/faithfulness.py src/skinlesion/default_bundle --n 200 --steps 10 --n-random 3 \
        --compare gradcam++@bn2 gradcam@bn2 layercam@blocks.4 "layercam@blocks.4+bn2" \
        "gradcam++@bn2;views=flips" "gradcam++@bn2;scale=2" --out bench/results/faithfulness_x.json

A spec is ``METHOD[@LAYER+LAYER][;views=V,V][;scale=S]`` (``default``: the registry's); the
first one is the reference of the configuration-vs-configuration differences.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

if not __package__:  # run as a file (python bench/faithfulness.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import BenchError, json_main

from skinlesion.ensemble.bundle import is_bundle, load_model_source
from skinlesion.explain.faithfulness_split import faithfulness_over_split


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="Bundle folder or checkpoint folder.")
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--method", default=None, help="CAM method (default: the registry's, as reports show).")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--baseline", default="blur")
    ap.add_argument("--n-random", type=int, default=5)
    ap.add_argument("--random-kind", default="smooth")
    ap.add_argument("--mask-source", default="auto")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available).")
    ap.add_argument("--records", action="store_true", help="Include the per-image records.")
    ap.add_argument("--compare", nargs="+", default=None, metavar="SPEC",
                    help="Compare these CAM configurations (first = reference); --method is then unused.")
    ap.add_argument("--out", default=None, help="Also write the JSON to this file.")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    ap.add_argument("--package-note", nargs="+", default=None, metavar="SPEC",
                    help="With --compare and --out: store these configurations' results in the packaged "
                         "skinlesion/explain/attention_faithfulness.json (what reports state).")
    ap.add_argument("--label", default=None, help="Name of the measured model in that file (default: the path).")
    return ap.parse_args(argv)


def run_compare(args: argparse.Namespace, bundle: object) -> dict:
    from skinlesion.explain.faithfulness_compare import compare_configurations

    partial = None
    if args.out:  # one JSON line per image as it is done: a run stopped early can still be summarised
        import json
        from pathlib import Path

        from skinlesion.metrics.classification import to_jsonable

        path = Path(args.out).with_suffix(".records.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

        def partial(rec: dict) -> None:
            with path.open("a") as f:
                f.write(json.dumps(to_jsonable(rec), allow_nan=False, default=str) + "\n")
    try:
        res = compare_configurations(
            bundle, args.compare, split=args.split, n=args.n, steps=args.steps, baseline=args.baseline,
            n_random=args.n_random, seed=args.seed, data_root=args.data_root, n_boot=args.n_boot,
            batch_size=args.batch_size, device=args.device, on_record=partial,
        )
    except ValueError as e:
        raise BenchError(str(e)) from None
    res = {"bench": "faithfulness-compare", "source": args.model, **res}
    if args.package_note:
        from skinlesion.explain.faithfulness_compare import parse_config
        from skinlesion.explain.faithfulness_note import entry_from_comparison, write_entries

        if not args.out:
            raise BenchError("--package-note needs --out (the entries cite that file).")
        label = args.label or args.model
        try:
            entries = [entry_from_comparison(res, parse_config(spec).name, bundle, label=label,
                                             source=f"bench/faithfulness.py, {args.out}") for spec in args.package_note]
        except ValueError as e:
            raise BenchError(str(e)) from None
        res["packaged"] = str(write_entries(entries))
    if not args.records:
        res.pop("records")
    return res


def run(args: argparse.Namespace) -> dict:
    source = {"bundle": args.model} if is_bundle(args.model) else {"checkpoint": args.model}
    res = run_compare(args, load_model_source(**source)) if args.compare else _run_one(args, source)
    if args.out:
        import json
        from pathlib import Path

        from skinlesion.metrics.classification import to_jsonable

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(to_jsonable(res), indent=1, allow_nan=False, default=str) + "\n")
    return res


def _run_one(args: argparse.Namespace, source: dict) -> dict:
    res = faithfulness_over_split(
        load_model_source(**source), split=args.split, n=args.n, method=args.method, steps=args.steps,
        baseline=args.baseline, n_random=args.n_random, random_kind=args.random_kind, mask_source=args.mask_source,
        seed=args.seed, data_root=args.data_root, n_boot=args.n_boot, batch_size=args.batch_size, device=args.device,
    )
    if not args.records:
        res.pop("records")
    return res


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("faithfulness.py", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
