"""bench/fold_ablation.py on two tiny members of one fold: plumbing and the paired change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_same_member_twice_gives_zero_change_and_other_folds_are_refused(tmp_path: Path, capsys) -> None:
    from bench import fold_ablation
    from skinlesion.data.readers import load_dataset
    from skinlesion.data.splits import kfold_keeping_test, make_split, write_manifest
    from skinlesion.data.synthetic import write_synthetic_dataset
    from skinlesion.train.config import load_config
    from skinlesion.train.run import train

    write_synthetic_dataset(tmp_path / "syn", n_lesions_per_class=6, seed=4)
    table = load_dataset("ham10000", tmp_path / "syn")
    write_manifest(kfold_keeping_test(table, make_split(table, val_fraction=0.2, test_fraction=0.2, seed=0), k=2), tmp_path / "cv.csv")
    runs = []
    for f in (0, 1):
        cfg = load_config("tiny", [f"data.root={tmp_path / 'syn'}", f"data.manifest={tmp_path / 'cv.csv'}", f"data.fold={f}"])
        runs.append(train(cfg, run_dir=tmp_path / f"f{f}").checkpoint_dir)
    capsys.readouterr()  # the trainings' progress output
    copy = tmp_path / "again"
    shutil.copytree(runs[0].parent, copy)
    assert fold_ablation.main([str(runs[0]), str(copy / "checkpoint"), "--tta", "identity", "flips", "--n-boot", "20"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["fold"] == 0 and res["n_images"] > 0
    for tta in ("identity", "flips"):
        assert res["change"][tta]["bacc"]["estimate"] == 0.0
        assert res["models"]["reference"][tta]["bacc"] == res["models"]["variant"][tta]["bacc"]
    trained = res["models"]["reference"]["input_size"]
    bigger = f"{trained[0] + 8}x{trained[1] + 8}"
    assert fold_ablation.main([str(runs[0]), str(copy / "checkpoint"), "--tta", "identity", "--n-boot", "5", "--size", bigger]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["models"]["reference"]["input_size"] == res["models"]["variant"]["input_size"] == [trained[0] + 8, trained[1] + 8]
    assert res["change"]["identity"]["bacc"]["estimate"] == 0.0  # same weights, same size
    assert fold_ablation.main([str(runs[0]), str(copy / "checkpoint"), "--tta", "identity", "--n-boot", "5", "--variant-size", bigger]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["models"]["reference"]["input_size"] == trained and res["models"]["variant"]["input_size"] == [trained[0] + 8, trained[1] + 8]
    # an ensemble of the member and its copy is the member: no change under the same views; other views are named
    pair = f"{runs[0]},{copy / 'checkpoint'}"
    assert fold_ablation.main([str(runs[0]), pair, "--tta", "flips", "--variant-tta", "flips", "--n-boot", "5"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["models"]["variant"]["checkpoints"] == [str(runs[0]), str(copy / "checkpoint")]
    assert res["change"]["flips vs flips"]["bacc"]["estimate"] == pytest.approx(0.0, abs=1e-12)
    assert fold_ablation.main([str(runs[0]), pair, "--tta", "flips", "--variant-tta", "identity", "--n-boot", "5"]) == 0
    mixed = json.loads(capsys.readouterr().out)
    assert mixed["models"]["variant"]["flips"]["views"] == ["identity"]
    assert fold_ablation.main([str(runs[0]), str(runs[0]), "--tta", "identity", "--n-boot", "5"]) == 0
    alone = json.loads(capsys.readouterr().out)  # the member alone on the identity view: what the pair scored
    assert mixed["models"]["variant"]["flips"]["bacc"] == alone["models"]["reference"]["identity"]["bacc"]
    assert fold_ablation.main([str(runs[0]), f"{runs[0]},{runs[1]}", "--n-boot", "5"]) == 2
    assert "same fold" in capsys.readouterr().err
    assert fold_ablation.main([str(runs[0]), str(copy / "checkpoint"), "--size", "big"]) == 2
    assert "--size" in capsys.readouterr().err
    assert fold_ablation.main([str(runs[0]), str(runs[1]), "--n-boot", "5"]) == 2
    assert "same fold" in capsys.readouterr().err
