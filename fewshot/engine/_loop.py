"""The epoch loop shared by both training stages: steps, logging to TensorBoard, validation,
``last.pt`` / ``best.pt`` checkpoints and ``--max-steps``."""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Dict, Iterable, Optional

import torch
from tqdm import tqdm

from ..errors import FewShotError
from . import _distributed as ddp
from . import checkpoint
from ._state import Stage, log
from .evaluate import format_result, progress_bars

DONE = "done.json"   # written in a stage's folder when it has run all its epochs


def run_epochs(stage: Stage, epochs: int, steps_per_epoch: int,
                batches: Callable[[int, int], Iterable], step_fn: Callable,
                validate: Callable[[], Dict[str, float]], unit: str, val_every: int,
                on_validate: Optional[Callable] = None, validate_first: bool = False) -> None:
    """The loop shared by both stages.

    ``batches(epoch, offset)`` yields the batches of ``epoch`` from position ``offset``;
    ``step_fn(batch)`` returns (loss tensor, accuracy %, items in the batch);
    ``on_validate(writer, step)`` adds to TensorBoard after each validation;
    ``validate_first``: a validation at step 0 of a new run (the starting point, and best.pt).
    """
    from torch.utils.tensorboard import SummaryWriter

    cfg = stage.config.run
    main = ddp.is_main()
    # a resumed run drops what a killed run logged after its checkpoint (steps > stage.step)
    writer = SummaryWriter(os.path.join(stage.folder, "tb"), purge_step=stage.step + 1 if stage.step else None) \
        if main else None
    last_path, best_path = os.path.join(stage.folder, "last.pt"), os.path.join(stage.folder, "best.pt")
    # run.amp: float16 autocast with loss scaling on CUDA, bfloat16 autocast (no scaling) on the CPU
    amp_dtype = torch.float16 if stage.device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and stage.device.type == "cuda")
    if cfg.amp:
        log(f"[{stage.name}] mixed precision: {str(amp_dtype).replace('torch.', '')} autocast on {stage.device.type}")
    total = epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    bar = tqdm(total=total, initial=min(stage.step, total), desc=stage.name,
               disable=not (progress_bars(cfg.progress) and main), dynamic_ncols=True)

    validated_at = [-1]

    def save(path: str) -> None:
        if main:
            writer.flush()               # the log holds every step the checkpoint holds
            checkpoint.save_checkpoint(path, stage.state())

    def check_val() -> None:
        validated_at[0] = stage.step
        if not main:                      # the main process validates; the others wait for it
            ddp.barrier()
            return
        result = validate()
        writer.add_scalar("val/accuracy", result["accuracy"], stage.step)
        writer.add_scalar("val/ci95", result["ci95"], stage.step)
        if on_validate is not None:
            on_validate(writer, stage.step)
        improved = result["accuracy"] > stage.best
        if improved:
            stage.best = result["accuracy"]
        log(f"[{stage.name}] epoch {stage.epoch} step {stage.step}: val {format_result(result)}"
            + ("  (best)" if improved else ""))
        if improved or not os.path.exists(best_path):
            checkpoint.save_checkpoint(best_path, stage.state())
        ddp.barrier()

    if validate_first and stage.step == 0 and stage.best < 0:
        log(f"[{stage.name}] validating the starting model (step 0)")
        check_val()
    stopped = False
    while stage.epoch < epochs and not stopped:
        if cfg.max_steps and stage.step >= cfg.max_steps:
            stopped = True
            break
        offset = stage.step - stage.epoch * steps_per_epoch
        stage.model.train()
        for m in stage.extra.values():
            m.train()
        tic = time.perf_counter()
        for batch in batches(stage.epoch, offset):
            if cfg.max_steps and stage.step >= cfg.max_steps:
                stopped = True
                break
            with torch.autocast(stage.device.type, dtype=amp_dtype, enabled=cfg.amp):
                loss, acc, items = step_fn(batch)
            if not torch.isfinite(loss):
                raise FewShotError(f"[{stage.name}] the training loss is {loss.item()} at step "
                                   f"{stage.step}: lower {stage.name}.lr or check the data")
            stage.optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(stage.optimizer)
            scaler.update()
            stage.scheduler.step()
            stage.step += 1
            bar.update(1)
            toc = time.perf_counter()
            if stage.step % cfg.log_every == 0 and main:
                writer.add_scalar("train/loss", loss.item(), stage.step)
                writer.add_scalar("train/accuracy", acc, stage.step)
                writer.add_scalar("train/lr", stage.optimizer.param_groups[0]["lr"], stage.step)
                writer.add_scalar(f"train/{unit}_per_second", items / max(toc - tic, 1e-9), stage.step)
                bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.1f}")
            tic = toc
            if stage.step % cfg.checkpoint_every == 0:
                save(last_path)
        if stopped:
            break
        stage.epoch += 1
        if stage.epoch % max(1, val_every) == 0 or stage.epoch == epochs:
            check_val()
        save(last_path)
    if stopped:
        log(f"[{stage.name}] stopped after --max-steps {cfg.max_steps}")
        if validated_at[0] != stage.step:
            check_val()
        save(last_path)
    bar.close()
    if main:
        writer.close()
        if not stopped:           # the stage ran to its end: what scripts wait for before the next step
            checkpoint.atomic_write_text(os.path.join(stage.folder, DONE), json.dumps(
                {"stage": stage.name, "epochs": stage.epoch, "steps": stage.step, "best_val": stage.best}) + "\n")
    log(f"[{stage.name}] done: best val {stage.best:.2f} %; checkpoints in {stage.folder}")
