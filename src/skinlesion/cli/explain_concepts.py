"""``skinlesion explain concepts --bundle B``: learn a TCAV concept bank (Kim et al., ICML 2018).

Learns CAVs of the ABCDE concepts (and of user concept folders) for every member of a bundle,
saves them next to the bundle (``<bundle>/concepts``) and prints the member-weighted TCAV table.
"""

from __future__ import annotations

from pathlib import Path

import typer

from skinlesion.cli._common import console, user_errors


def concepts_command(
    bundle: Path | None = typer.Option(None, "--bundle", help="Decision bundle folder."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="A single checkpoint instead of a bundle."),
    split: str = typer.Option("train", "--split", help="train, val or test of the model's manifest."),
    n_per_class: int = typer.Option(40, "--n-per-class", min=1, help="Images per class (one per lesion)."),
    concepts_dir: Path | None = typer.Option(
        None, "--concepts-dir", help="User concepts: DIR/<concept>/<images> (a 'random' subfolder is the random pool)."
    ),
    n_runs: int = typer.Option(10, "--n-runs", min=2, help="CAVs per concept (and random CAVs) for the t-test."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default <bundle>/concepts)."),
    abcde: bool = typer.Option(True, "--abcde/--no-abcde", help="Derive concepts from ABCDE measurements."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level after Bonferroni correction."),
    seed: int = typer.Option(0, "--seed", min=0),
    data_root: str | None = typer.Option(None, "--data-root", help="Dataset folder, if it moved since training."),
) -> None:
    """Learn concept activation vectors and test which concepts matter for which class (TCAV)."""
    from skinlesion.ensemble.bundle import load_model_source
    from skinlesion.explain.concept_bank import learn_concept_bank

    with user_errors():
        model = load_model_source(bundle=bundle, checkpoint=checkpoint)
        bank = learn_concept_bank(model, split=split, n_per_class=n_per_class, concepts_dir=concepts_dir,
                                  abcde_concepts=abcde, n_runs=n_runs, alpha=alpha, seed=seed, data_root=data_root)
        saved = bank.save(out)

    members = ", ".join(f"{m.name} (w={m.weight:.3f}, layer {m.layer})" for m in bank.members)
    console.print(f"TCAV on {split}, {n_runs} runs, weighted over members: {members}", highlight=False)
    width = max(len(c) for c in bank.concepts)
    header = f"{'class':<6} {'concept':<{width}}  TCAV mean ± std  random  p (corrected)  verdict"
    console.print(header, highlight=False, soft_wrap=True)
    for row in bank.table():
        verdict = "significant" if row["significant"] else "not significant"
        if row["cav_accuracy"] < bank.settings["min_cav_accuracy"]:
            verdict += f" (CAV accuracy {row['cav_accuracy']:.2f}, near chance)"
        console.print(f"{row['class']:<6} {row['concept']:<{width}}  {row['tcav_mean']:.2f} ± {row['tcav_std']:.2f}"
                      f"      {row['random_mean']:.2f}    {row['p_value_corrected']:<13.3g}  {verdict}",
                      highlight=False, soft_wrap=True)
    counts = ", ".join(f"{name} {c['examples']}" for name, c in bank.concept_counts.items())
    console.print(f"concept examples: {counts}", highlight=False, soft_wrap=True)
    for note in bank.notes:
        console.print(f"note: {note}", highlight=False)
    if len(bank.members) > 1:
        console.print("per-member tables: member_results in concepts.json")
    console.print("Decision support only: a concept that is not significant must not be read as an explanation.")
    console.print(f"saved: {saved}", highlight=False, soft_wrap=True)
