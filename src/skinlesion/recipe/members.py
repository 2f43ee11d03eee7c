"""Training a recipe's members: one at a time in this process, or side by side in processes of their own."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from skinlesion.errors import ConfigError
from skinlesion.recipe.spec import MemberSpec, Recipe, distributed_rank, member_dir, member_trained

log = logging.getLogger(__name__)


def _train(
    recipe: Recipe, spec: MemberSpec, out: Path, machine: list[str] | None = None, extra_callbacks: tuple[Any, ...] = (),
) -> dict[str, Any] | None:
    from skinlesion.train.config import load_config
    from skinlesion.train.run import train

    overrides = [f"name={recipe.name}-{spec.name}", *recipe.set, *spec.set]
    if recipe.data_root is not None:
        overrides.append(f"data.root={recipe.data_root}")
    overrides += machine or []  # properties of the machine, not of the model (threads, devices, nodes)
    cfg = load_config(spec.preset, overrides)
    run_dir = member_dir(out, spec.name)
    if not member_trained(out, spec.name):
        resume = (run_dir / "lightning" / "last.ckpt").is_file()
        log.info("training %s (%s%s)", spec.name, spec.preset, ", resuming" if resume else "")
        train(cfg, run_dir=run_dir, resume=resume, extra_callbacks=extra_callbacks)
    if distributed_rank() > 0:  # a DDP worker joins the training; rank 0 records it
        return None
    meta = json.loads((run_dir / "checkpoint" / "checkpoint.json").read_text())
    return {
        "checkpoint": str(run_dir / "checkpoint"),
        "val_bacc": meta["validation"].get("bacc"),
        "epochs": meta["training"].get("epochs_completed"),
        "training_seconds": meta["training"].get("wall_time_s"),  # earlier processes of a resumed training included
        "training_seconds_this_process": meta["training"].get("wall_time_this_process_s"),
        **({"earlier_processes": meta["training"]["earlier_processes"]} if meta["training"].get("earlier_processes") else {}),
        "overrides": overrides,
    }


# -- side by side ---------------------------------------------------------------------------------
_RUNNING: Any = None  # in a worker process: the count of trainings running now (a shared integer)
_CORES = 1  # in a worker process: the cores the trainings share


def _init_worker(running: Any, cores: int) -> None:
    global _RUNNING, _CORES
    _RUNNING, _CORES = running, cores


def cores_available() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under ``taskset``), else the CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_share(running: Any, cores: int) -> Any:
    """A Lightning callback: at each epoch start, this training takes ``cores // running`` torch
    threads (at least one), so that a training left alone (the last of an odd number, or one whose
    partner failed) uses the cores the finished ones freed."""
    import torch
    from lightning.pytorch.callbacks import Callback

    class ThreadShare(Callback):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            want = max(1, cores // max(1, int(running.value)))
            if want != torch.get_num_threads():
                log.info("%d training(s) running on %d cores: %d torch thread(s) from now on", running.value, cores, want)
                torch.set_num_threads(want)

    return ThreadShare()


def _train_worker(
    recipe_json: str, spec_json: str, out: str, machine: list[str], log_file: str, reshare: bool,
) -> tuple[dict[str, Any], float, float]:
    """One member's training in its own process (``jobs`` > 1): its output goes to ``log_file``.
    With ``reshare`` its threads follow the number of trainings running (:func:`thread_share`).
    Returns the training's record and the process's own start and end times."""
    started = time.time()
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = MemberSpec.model_validate_json(spec_json)
    with _RUNNING.get_lock():
        _RUNNING.value += 1
    try:
        callbacks = (thread_share(_RUNNING, _CORES),) if reshare else ()
        info = _train(Recipe.model_validate_json(recipe_json), spec, Path(out), machine, callbacks)
    except BaseException:
        log.exception("training %s failed", spec.name)  # the traceback stays in its log
        raise
    finally:
        with _RUNNING.get_lock():
            _RUNNING.value -= 1
    assert info is not None  # no DDP under jobs > 1 (checked before)
    return info, started, time.time()


_PLACEMENT = ("trainer.devices=", "trainer.strategy=", "trainer.num_nodes=")


def train_side_by_side(
    recipe: Recipe, names: list[str], specs: dict[str, MemberSpec], out: Path, machine: list[str], jobs: int,
    record: Callable[[str, dict[str, Any]], None],
) -> None:
    """Train ``names`` in up to ``jobs`` processes at once, each starting with ``cores // jobs``
    torch threads and taking the freed cores at its next epoch when fewer trainings run
    (:func:`thread_share`), unless ``machine`` sets ``trainer.threads`` (then fixed). Each finished
    member is recorded (``record``) as soon as it finishes, so a failure of one loses none of the
    others. Raises the first failure, naming the member and its log, after every other training has ended."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    placed = [m for m in machine if m.startswith(_PLACEMENT)]
    if placed:
        raise ConfigError(f"--jobs {jobs} trains members side by side on this machine's cores; it cannot be combined "
                          f"with {placed} (multi-device trainings run one member at a time)")
    cores = cores_available()
    reshare = not any(m.startswith("trainer.threads=") for m in machine)
    if reshare:
        machine = [*machine, f"trainer.threads={max(1, cores // jobs)}"]
    failures: list[tuple[str, BaseException, Path]] = []
    ctx = multiprocessing.get_context("spawn")
    running = ctx.Value("i", 0)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, max_tasks_per_child=1, initializer=_init_worker,
                             initargs=(running, cores)) as pool:
        futures = {}
        for name in names:
            log_file = member_dir(out, name) / "train.log"
            log_file.parent.mkdir(parents=True, exist_ok=True)
            futures[pool.submit(_train_worker, recipe.model_dump_json(), specs[name].model_dump_json(), str(out),
                                machine, str(log_file), reshare)] = (name, log_file)
            log.info("training %s in its own process (%d at a time; log %s)", name, jobs, log_file)
        for fut in as_completed(futures):
            name, log_file = futures[fut]
            try:
                info, t0, t1 = fut.result()
            except BaseException as e:  # recorded; raised once the others are done
                log.error("training %s failed: %s (log %s)", name, e, log_file)
                failures.append((name, e, log_file))
                continue
            whole, this = info.get("training_seconds"), info.get("training_seconds_this_process")
            earlier = max(0.0, float(whole) - float(this)) if whole is not None and this is not None else 0.0
            record(f"train:{name}", {
                "seconds": round(t1 - t0, 1), "concurrent": True,
                "started": datetime.fromtimestamp(t0, timezone.utc).isoformat(timespec="milliseconds"),
                **({"earlier_seconds": round(earlier, 1)} if earlier > 0 else {}), **info,
            })
    if failures:
        name, e, log_file = failures[0]
        others = f"; also failed: {[n for n, _, _ in failures[1:]]}" if len(failures) > 1 else ""
        msg = f"training of member {name!r} failed: {e} (its log: {log_file}){others}; finished members are recorded"
        try:
            err: BaseException = type(e)(msg)
        except Exception:
            err = RuntimeError(msg)
        raise err from e
