"""The whole run: train full precision, search, derive, fine-tune the pruned model, evaluate.

Each phase checkpoints at every epoch boundary; ``resume`` continues from the last one. Every
epoch reseeds torch and python from (seed, phase, epoch), and every phase starts by reseeding
them from (seed, phase), so a run resumed from any checkpoint (inside a phase or at the boundary
between two) replays the same random numbers and ends with the same result. One process at a
time works in a run directory (:class:`~hwsbs.checkpoint.RunDirLock`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hardware_profiles.checked_io import write_text_atomic
from hwsbs.apb.format import restore_apb_layers
from hwsbs.budget import budget_report, resolve_target
from hwsbs.checkpoint import CHECKPOINT_NAME, RunDirLock, load_checkpoint, load_weights_into, save_checkpoint
from hwsbs.config import SearchConfig
from hwsbs.defaults import FINETUNE_LR_FACTOR
from hwsbs.distributed import (
    broadcast_object,
    broadcast_state,
    gather_objects,
    init_from_env,
    is_main,
    shutdown,
    sync_batch_norms,
    world,
)
from hwsbs.errors import ConfigError, HwsbsError
from hwsbs.methods import MethodContext, get_method
from hwsbs.objectives import Objective, resolve_cost_model
from hwsbs.progress import PhaseProgress
from hwsbs.quant.channel_bits import enable_channel_bits
from hwsbs.quant.compiled import compile_quantizers
from hwsbs.quant.matmul import SBSMatmul
from hwsbs.result import SearchResult, cost_summary, write_outputs
from hwsbs.run_options import OPTIONS_NAME, check_resume_options
from hwsbs.run_state import RunState, default_run_dir
from hwsbs.sbs.config_io import CompressionConfig, load_config, save_config
from hwsbs.sbs.convert import SearchSpace, convert_model
from hwsbs.sbs.coverage import check_searchable
from hwsbs.sbs.derive import apply_config, build_compressed_model
from hwsbs.sbs.engine import CostObjective
from hwsbs.seeding import seed_phase
from hwsbs.training import evaluate, evaluate_metrics, make_sgd, perplexity, split_decay, train_epoch

__all__ = [
    "run_search",
    "resolve_cost_model",
    "default_run_dir",
    "Objective",
    "build_compressed_model",
    "load_weights_into",
]


_PHASE_WHAT = {"pretrain": "full-precision training", "finetune": "fine-tuning"}


def _train_phase(
    run: RunState, phase: str, model: nn.Module, epochs: int, lr: float, ckpt: dict | None, progress: PhaseProgress
) -> None:
    """Cross-entropy training (SGD, cosine schedule) with a checkpoint after every epoch."""
    optimizer = make_sgd(*split_decay(model), lr, run.cfg.weight_decay)
    spe = run.steps_per_epoch()
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs * spe, 1))
    start = 0
    if ckpt is not None and ckpt["phase"] == phase:
        optimizer.load_state_dict(ckpt["optim"]["optimizer"])
        scheduler.load_state_dict(ckpt["optim"]["scheduler"])
        start = int(ckpt["epoch"])
    progress.start(phase, epochs * spe, start * spe)
    for epoch in range(start, epochs):
        loss = train_epoch(
            model,
            run.loader(phase, epoch),
            optimizer,
            scheduler,
            run.device,
            progress,
            f"{_PHASE_WHAT[phase]} epoch {epoch + 1}",
        )
        run.record({"phase": phase, "epoch": epoch + 1, "loss": loss})
        run.checkpoint(
            phase, epoch + 1, model, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        )


def _convert(run: RunState, fp_model: nn.Module) -> SearchSpace:
    cfg = run.cfg
    space = convert_model(
        fp_model,
        run.example,
        cfg.bits,
        group_size=cfg.group_size,
        max_prune_fraction=cfg.max_prune_fraction,
        temperature=cfg.temperature,
        pin_first_last=cfg.pin_first_last,
        pin_bits=cfg.pin_bits,
        prune=cfg.prune and get_method(cfg.method).prunes,
        weight_only_act_bits=cfg.act_float_bits if cfg.weight_only else None,
        weight_group=cfg.weight_group,
    )
    if cfg.granularity == "channel":  # weight gates per output-channel group (issue 17)
        for _, layer in space.layers():
            plain = not isinstance(layer, SBSMatmul) and getattr(layer, "groups", 1) == 1  # no depthwise/grouped
            if plain and not layer.pinned and layer.search_weight_bits:
                enable_channel_bits(layer)
    return space


def _run_method(run: RunState, space: SearchSpace, ckpt: dict | None, progress: PhaseProgress) -> CompressionConfig:
    cfg = run.cfg
    objectives = [
        CostObjective(cm, o.weight, resolve_target(cfg, space, cm, cm is run.cost_model)) for o, _, cm in run.objectives
    ]
    resuming = ckpt is not None and ckpt["phase"] == "search"

    def save_state(epochs_done: int, state: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        run.record({"phase": "search", "epoch": epochs_done, **(metrics or {})})
        run.checkpoint("search", epochs_done, space.model, state)

    ctx = MethodContext(
        config=cfg,
        space=space,
        objectives=objectives,
        train_loader=run.loader,
        val_loader=run.val_loader,
        device=run.device,
        progress=progress,
        save_state=save_state,
        resume_state=cast(dict, ckpt)["optim"] if resuming else None,  # resuming: ckpt is set
        resume_epoch=int(cast(dict, ckpt)["epoch"]) if resuming else 0,
        model_name=run.model_name,
        dataset=cfg.data,
        extra=dict(cfg.extra),
    )
    return get_method(cfg.method).run(ctx)


def run_search(
    config: SearchConfig,
    *,
    model: nn.Module | None = None,
    train_data: DataLoader | Dataset | None = None,
    val_data: DataLoader | Dataset | None = None,
    objectives: Sequence[Objective] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> SearchResult:
    """Run the whole pipeline for ``config`` and write its artefacts to the run directory.

    Args:
        config: every option of the run.
        model: a full-precision model (default: built from ``config.model``).
        train_data / val_data: DataLoaders or Datasets (default: built from ``config.data``).
        objectives: costs to pay in the loss (default: ``config.hw`` with weight 1). Results are
            reported on the first; the others appear under ``extra_costs``.
        on_epoch: called with each epoch's history entry (phase, epoch, metrics) as it is recorded.

    Returns:
        The :class:`SearchResult`; ``result.model`` is the fine-tuned compressed model.
    """
    get_method(config.method)  # an unknown method fails before any work
    device, joined = init_from_env(config.device)  # a torchrun job: join its process group
    compile_quantizers(config.compile, notice=is_main())  # --compile (or back to eager)
    failed = True
    try:
        if world().distributed and config.curvature:
            raise ConfigError("--curvature: not supported under torchrun (its Fisher estimate is per rank)")
        run = RunState(config, model, train_data, val_data, objectives, device)
        run.on_epoch = on_epoch
        lock = _open_run_dir(run)
        try:
            result = _run_locked(run, lock)
        finally:
            if lock is not None:
                lock.release()
        failed = False
        return result
    finally:
        shutdown(joined, failed)


def _open_run_dir(run: RunState) -> RunDirLock | None:
    """Create or check the run directory and lock it (on rank 0; its refusal reaches every rank)."""
    cfg, run_dir = run.cfg, run.run_dir
    problem: HwsbsError | None = None
    lock = None
    if is_main():
        try:
            if cfg.resume and not run_dir.is_dir():
                raise ConfigError(f"--resume: run directory {run_dir} does not exist")
            if not cfg.resume:
                _refuse_existing_run(run_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
            lock = RunDirLock(run_dir)
            lock.acquire()
        except HwsbsError as exc:
            problem = exc
    message = broadcast_object(None if problem is None else str(problem))
    if problem is not None:
        raise problem
    if message is not None:
        raise ConfigError(str(message))
    return lock


def _refuse_existing_run(run_dir: Path) -> None:
    if (run_dir / CHECKPOINT_NAME).exists() or (run_dir / "result.json").exists():
        raise ConfigError(f"--out {run_dir}: already holds a run; pass --resume to continue it or choose another --out")


def _run_locked(run: RunState, lock: RunDirLock | None) -> SearchResult:
    """The run, while rank 0 holds the run directory's lock (``lock`` is None on other ranks)."""
    cfg = run.cfg
    run_dir = run.run_dir
    ckpt = None
    if cfg.resume:
        check_resume_options(run_dir, cfg)
        ckpt = load_checkpoint(run_dir)
    elif lock is not None:
        _refuse_existing_run(run_dir)  # again: another process may have started one meanwhile
    if lock is not None:
        lock.record_pid()
        write_text_atomic(run_dir / OPTIONS_NAME, json.dumps(cfg.to_dict(), indent=2, default=str), "run options")
    if ckpt is not None:
        run.history = json.loads(ckpt.get("history", "[]"))
        run.fp_accuracy = ckpt.get("fp_accuracy")
        if ckpt["phase"] == "done":
            return _finish(run, ckpt, None)

    fp_model = run.model_builder_state.to(run.device)
    sync_batch_norms(fp_model)  # under torchrun: statistics of the global batch, as one process sees it
    phase = ckpt["phase"] if ckpt is not None else "pretrain"
    with PhaseProgress(cfg.progress and is_main()) as progress:
        if phase == "pretrain":
            seed_phase(cfg.seed, "pretrain")
            if ckpt is not None:
                load_weights_into(fp_model, ckpt["model"], f"{run_dir}/checkpoint.pt")
            elif run.fp_state is not None:
                load_weights_into(fp_model, run.fp_state, f"--checkpoint {cfg.checkpoint}")
            broadcast_state(fp_model)
            if cfg.checkpoint is None and cfg.pretrain_epochs > 0:
                _train_phase(run, "pretrain", fp_model, cfg.pretrain_epochs, cfg.lr, ckpt, progress)
            run.fp_accuracy = evaluate(fp_model, run.val_loader, run.device)
            progress.log(f"full precision: accuracy {run.fp_accuracy:.4f}")
            ckpt = None
        seed_phase(cfg.seed, "search")
        space = _convert(run, fp_model)
        broadcast_state(space.model)  # rank 0's calibration (each rank calibrated on its own shard)
        run.coverage = check_searchable(space, progress.log)
        config_path = run_dir / "config.yaml"
        if phase in ("pretrain", "search"):
            if ckpt is not None:  # resuming inside the search
                restore_apb_layers(space.model, ckpt["model"])  # --method apb: its layers carry alpha/delta
                load_weights_into(space.model, ckpt["model"], f"{run_dir}/checkpoint.pt")
            found = _agreed(run, _run_method(run, space, ckpt, progress))
            if is_main():
                save_config(found, config_path)
            ckpt = None
        else:
            found = load_config(config_path)
        budget = budget_report(run.cfg, space, run.cost_model, found)
        if budget is not None and not budget["met"]:
            progress.log(
                f"budget {budget['target']:.4g} {run.cost_model.unit} not met: the configuration costs "
                f"{budget['cost']:.4g}"
                + ("" if budget["reachable"] else f"; the cheapest this search space allows is {budget['floor']:.4g}")
            )
        seed_phase(cfg.seed, "finetune")
        model = apply_config(space, found, str(config_path))
        if ckpt is not None and ckpt["phase"] == "finetune":
            restore_apb_layers(model, ckpt["model"])
            load_weights_into(model, ckpt["model"], f"{run_dir}/checkpoint.pt")
        broadcast_state(model)
        _train_phase(run, "finetune", model, cfg.finetune_epochs, cfg.lr * FINETUNE_LR_FACTOR, ckpt, progress)
    return _finish(run, None, (model, found), budget)


def _finish(
    run: RunState,
    done_ckpt: dict | None,
    trained: tuple[nn.Module, CompressionConfig] | None,
    budget: dict[str, Any] | None = None,
) -> SearchResult:
    cfg = run.cfg
    found = load_config(run.run_dir / "config.yaml") if trained is None else trained[1]
    model = trained[0] if trained is not None else None
    if model is not None:
        compressed_acc, compressed_loss = evaluate_metrics(model, run.val_loader, run.device)
        ppl = perplexity(compressed_loss) if run.sequence else None
    if model is not None and is_main():
        save_checkpoint(
            {
                "phase": "done",
                "epoch": 0,
                "model": model.state_dict(),
                "optim": {},
                "fp_accuracy": run.fp_accuracy,
                "history": json.dumps(run.history),
                "compressed_accuracy": compressed_acc,
                "budget": json.dumps(budget),
                "perplexity": ppl,
                "coverage": json.dumps(run.coverage),
                "distributed": json.dumps(run.distributed),
            },
            run.run_dir,
        )
    elif model is None:
        assert done_ckpt is not None
        compressed_acc = float(done_ckpt["compressed_accuracy"])
        budget = json.loads(done_ckpt.get("budget", "null"))
        run.coverage = json.loads(done_ckpt.get("coverage", "null"))
        run.distributed = json.loads(done_ckpt.get("distributed", "null"))
        ppl = done_ckpt.get("perplexity")  # None for classifiers (and checkpoints from before it)
    costs, layers = cost_summary(found, run.cost_model)
    extra: dict[str, dict[str, Any]] = {}
    for _, profile, cm in run.objectives[1:]:
        c, _ = cost_summary(found, cm)
        extra[f"{profile.name}:{cm.name}"] = {**c, "unit": cm.unit, "metric": cm.metric}
    result = SearchResult(
        hardware=run.profile.name,
        cost_model=run.cost_model.name,
        metric=run.cost_model.metric,
        unit=run.cost_model.unit,
        accuracy={
            "full_precision": float(run.fp_accuracy) if run.fp_accuracy is not None else float("nan"),
            "compressed": compressed_acc,
        },
        cost=costs,
        layers=layers,
        config=found,
        method=cfg.method,
        run_dir=run.run_dir,
        model=model,
        history=run.history,
        extra_costs=extra,
        budget=budget,
        perplexity=ppl,
        coverage=run.coverage,
        distributed=run.distributed,
    )
    if is_main():
        write_outputs(result, run.run_dir)
    return result


def _agreed(run: RunState, found: CompressionConfig) -> CompressionConfig:
    """Rank 0's configuration on every rank, and whether every rank derived the same one."""
    every = gather_objects(found)
    if run.distributed is not None:
        run.distributed["ranks_agreed"] = all(c == every[0] for c in every)
        if not run.distributed["ranks_agreed"] and is_main():
            differ = [r for r, c in enumerate(every) if c != every[0]]
            warnings.warn(f"ranks {differ} derived another configuration than rank 0; rank 0's is used", stacklevel=2)
    return cast(CompressionConfig, every[0])
