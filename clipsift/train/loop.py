"""The contrastive training loop: from scratch or fine-tuning, with exact resume.

Run layout (OUTPUT):
    checkpoints/epoch_N.pt    after every epoch (model, optimizer, step, RNG states, data
                              position); `step_S.pt` inside an epoch (checkpoint_every,
                              or when max_steps stops mid-epoch)
    checkpoints/latest.txt    name of the newest checkpoint
    checkpoints/start.safetensors   the starting weights (kept when WiSE-FT is asked for)
    metrics.jsonl             one JSON object per epoch: loss, recall@1/5/10 both ways
    clipsift_model.json + model.safetensors   the final model folder

Example:
    >>> result = train(TrainConfig(data="pairs/", model="ViT-B-32", output="run", epochs=1))
    >>> result.history[-1].retrieval.image_to_text[5]
    0.42
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipsift.errors import TrainingError
from clipsift.models.folder import FolderConfig, save_model_folder
from clipsift.train.augment import EvalTransform, make_train_transform
from clipsift.train.checkpoint import (
    CHECKPOINT_FORMAT,
    latest_checkpoint,
    read_checkpoint,
    restore_rng,
    rng_state,
    save_start,
    trim_metrics,
    write_checkpoint,
)
from clipsift.train.config import (
    BuiltModel,
    TrainConfig,
    build_model,
    lr_at,
    make_optimizer,
    resolve_device,
    resolve_precision,
    set_train_mode,
)
from clipsift.train.data import (
    EpochBatchSampler,
    EvalImages,
    PairBatch,
    PairDataset,
    batches_per_epoch,
    fingerprint,
    load_pairs,
    make_loader,
    split_pairs,
)
from clipsift.train.metrics import (
    EpochMetrics,
    RetrievalMetrics,
    contrastive_loss,
    evaluate_retrieval,
    same_caption,
)
from clipsift.train.wise import apply_wise

MAX_LOGIT_SCALE = math.log(100.0)
_BAD_EXAMPLES = 20


@dataclass
class TrainEvent:
    """Progress report passed to `on_progress`.

    kind: "start" (message, total_steps), "step" (after each optimizer step), "epoch" (after
    evaluation; `metrics` set), "warning" (message), "done" (message).
    """

    kind: str
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    total_steps: int = 0
    batch: int = 0
    batches: int = 0
    samples: int = 0
    loss: float | None = None
    lr: float = 0.0
    samples_per_s: float = 0.0
    metrics: EpochMetrics | None = None
    message: str = ""


@dataclass
class TrainResult:
    """The outcome of `train`: where the model folder is and what was measured."""

    output: Path
    epochs: int
    steps: int
    history: list[EpochMetrics]
    n_train: int
    n_val: int
    bad_images: int
    bad_examples: list[str]
    final: RetrievalMetrics | None
    wise_alpha: float | None
    resumed_from: str | None
    seconds: float


@dataclass
class _State:
    """Position in the run; saved in every checkpoint."""

    epoch: int = 0  # 0-based epoch in progress
    batches_done: int = 0  # micro-batches done in that epoch
    step: int = 0  # optimizer steps done
    loss_sum: float = 0.0
    loss_n: int = 0
    samples: int = 0
    bad: int = 0


@dataclass
class _Run:
    cfg: TrainConfig
    built: BuiltModel
    device: torch.device
    optimizer: torch.optim.Optimizer
    scaler: Any
    autocast: Callable[[], Any]
    train_ds: PairDataset
    val_items: list
    out: Path
    total_steps: int
    batches: int
    data_fp: str
    emit: Callable[[TrainEvent], None]
    history: list[EpochMetrics] = field(default_factory=list)
    bad_examples: list[str] = field(default_factory=list)


def train(config: TrainConfig, on_progress: Callable[[TrainEvent], None] | None = None
          ) -> TrainResult:
    """Train or fine-tune a CLIP model on image–caption pairs; write a model folder.

    Args:
        config: the run's options (validated here).
        on_progress: called with a `TrainEvent` at start, after each optimizer step, after
            each epoch and at the end. Exceptions it raises stop training (the last
            checkpoint stays valid).
    Returns:
        TrainResult with the per-epoch history and the final (post WiSE-FT) recall.
    Raises:
        TrainingError: unusable data, options, model or checkpoint.
    """
    cfg = config.validate()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, on_progress or (lambda _event: None))
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, emit: Callable[[TrainEvent], None]) -> TrainResult:
    started = time.time()
    run, state, resumed = _prepare(cfg, emit)
    emit(TrainEvent("start", epoch=state.epoch + 1, epochs=cfg.epochs, step=state.step,
                    total_steps=run.total_steps, batches=run.batches,
                    message=_start_message(run, resumed)))
    stopped = state.step >= run.total_steps
    while state.epoch < cfg.epochs and not stopped:
        t0, before = time.time(), state.samples
        stopped = _run_epoch(run, state)
        _finish_epoch(run, state, stopped, time.time() - t0, state.samples - before)
    final = _finalize(run, state)
    emit(TrainEvent("done", epoch=state.epoch, epochs=cfg.epochs, step=state.step,
                    total_steps=run.total_steps, message=f"saved model folder {run.out}"))
    return TrainResult(
        output=run.out, epochs=state.epoch, steps=state.step, history=run.history,
        n_train=len(run.train_ds), n_val=len(run.val_items),
        bad_images=sum(m.bad_images for m in run.history),
        bad_examples=run.bad_examples[:_BAD_EXAMPLES], final=final,
        wise_alpha=cfg.wise_alpha, resumed_from=resumed, seconds=time.time() - started,
    )


# ---- set-up ---------------------------------------------------------------------------------
def _prepare(cfg: TrainConfig, emit: Callable[[TrainEvent], None]
             ) -> tuple[_Run, _State, str | None]:
    out = Path(cfg.output)
    _check_output(out, cfg)
    _seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    pairs = load_pairs(cfg.data, cfg.image_column, cfg.caption_column, cfg.group_column)
    train_items, val_items = split_pairs(pairs.items, cfg.val_fraction)
    built = build_model(cfg)
    built.module.to(device)
    set_train_mode(built.module, cfg.freeze_image, cfg.freeze_text)
    autocast, scaler = resolve_precision(cfg.precision, device)
    batches = batches_per_epoch(len(train_items), cfg.batch_size)
    total = cfg.epochs * math.ceil(batches / cfg.grad_accum)
    run = _Run(
        cfg=cfg, built=built, device=device, optimizer=make_optimizer(built.module, cfg),
        scaler=scaler, autocast=autocast,
        train_ds=PairDataset(train_items, make_train_transform(
                                 built.preprocess, cfg.augment, cfg.backgrounds,
                                 cfg.background_share),
                             built.tokenizer, cfg.seed),
        val_items=val_items[: cfg.val_max_items], out=out,
        total_steps=min(total, cfg.max_steps) if cfg.max_steps else total, batches=batches,
        data_fp=fingerprint(train_items), emit=emit,
    )
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    state, resumed = _State(), None
    latest = latest_checkpoint(out) if cfg.resume else None
    if latest is not None:
        state = _load_checkpoint(run, latest)
        resumed = str(latest)
    elif cfg.resume:
        (out / "metrics.jsonl").unlink(missing_ok=True)
        emit(TrainEvent("warning", message=f"no checkpoint in {out / 'checkpoints'}; "
                                           "starting from the beginning"))
    if cfg.wise_alpha is not None and latest is None:
        save_start(built.module, out / "checkpoints" / "start.safetensors")
    return run, state, resumed


def _check_output(out: Path, cfg: TrainConfig) -> None:
    ck = out / "checkpoints"
    has_run = (ck.is_dir() and any(ck.iterdir())) or (out / "metrics.jsonl").exists()
    if not has_run or cfg.resume:
        return
    if not cfg.overwrite:
        raise TrainingError(
            f"{out} already holds a training run; pass resume to continue it, overwrite to "
            "start again, or choose another output folder"
        )
    shutil.rmtree(ck, ignore_errors=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _start_message(run: _Run, resumed: str | None) -> str:
    n_params = sum(p.numel() for p in run.built.module.parameters() if p.requires_grad)
    how = f"resuming from {resumed}" if resumed else "starting"
    return (f"{how}: {len(run.train_ds)} training / {len(run.val_items)} held-out images, "
            f"{n_params / 1e6:.2f}M trainable parameters, {run.total_steps} steps on "
            f"{run.device.type}")


# ---- the loop -------------------------------------------------------------------------------
def _micro_step(run: _Run, batch: PairBatch, divisor: int) -> float:
    module, cfg = run.built.module, run.cfg
    images = batch.images.to(run.device, non_blocking=True)  # [N, 3, H, W]
    tokens = batch.tokens.to(run.device, non_blocking=True)  # [N, context]
    with run.autocast():
        with torch.set_grad_enabled(not cfg.freeze_image):
            img = module.encode_image(images, normalize=True)  # [N, D]
        with torch.set_grad_enabled(not cfg.freeze_text):
            txt = module.encode_text(tokens, normalize=True)  # [N, D]
    loss = contrastive_loss(img, txt, module.logit_scale.exp(), same_caption(tokens))
    scaled = loss / divisor
    (run.scaler.scale(scaled) if run.scaler else scaled).backward()
    return float(loss.detach())


def _optimizer_step(run: _Run, step: int) -> float:
    cfg, opt, module = run.cfg, run.optimizer, run.built.module
    lr = lr_at(step, cfg.peak_lr, cfg.warmup_steps, run.total_steps)
    for group in opt.param_groups:
        group["lr"] = lr
    if run.scaler:
        run.scaler.unscale_(opt)
    if cfg.grad_clip > 0:
        params = [p for g in opt.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    if run.scaler:
        run.scaler.step(opt)
        run.scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        module.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
    return lr


def _run_epoch(run: _Run, state: _State) -> bool:
    """Train the rest of epoch `state.epoch`; True when max_steps stopped it early."""
    cfg = run.cfg
    sampler = EpochBatchSampler(len(run.train_ds), cfg.batch_size, cfg.seed, state.epoch,
                                state.batches_done)
    group: list[float] = []
    t0, seen = time.time(), 0
    for batch in make_loader(run.train_ds, cfg.workers, sampler):
        first = (state.batches_done // cfg.grad_accum) * cfg.grad_accum
        size = min(cfg.grad_accum, run.batches - first)
        _note_bad(run, state, batch.bad)
        if batch.indices:
            loss = _micro_step(run, batch, size)
            n = len(batch.indices)
            state.loss_sum, state.loss_n = state.loss_sum + loss * n, state.loss_n + n
            state.samples, seen = state.samples + n, seen + n
            group.append(loss)
        state.batches_done += 1
        if state.batches_done - first < size:
            continue
        lr = _optimizer_step(run, state.step)
        state.step += 1
        every = cfg.checkpoint_every
        if every and state.step % every == 0 and state.step < run.total_steps \
                and state.batches_done < run.batches:
            _save_checkpoint(run, state, run.out / "checkpoints" / f"step_{state.step}.pt")
        run.emit(TrainEvent(
            "step", epoch=state.epoch + 1, epochs=cfg.epochs, step=state.step,
            total_steps=run.total_steps, batch=state.batches_done, batches=run.batches,
            samples=seen, loss=sum(group) / len(group) if group else None, lr=lr,
            samples_per_s=seen / max(time.time() - t0, 1e-9)))
        group = []
        if state.step >= run.total_steps:
            return state.batches_done < run.batches
    return False


def _note_bad(run: _Run, state: _State, bad: list[str]) -> None:
    state.bad += len(bad)
    room = _BAD_EXAMPLES - len(run.bad_examples)
    if bad and room > 0:
        run.bad_examples.extend(bad[:room])


def _evaluate(run: _Run) -> RetrievalMetrics:
    if not run.val_items:
        return RetrievalMetrics()
    loader = make_loader(EvalImages(run.val_items, EvalTransform(run.built.preprocess)),
                         run.cfg.workers, batch_size=run.cfg.batch_size)
    metrics, bad = evaluate_retrieval(run.built.module, loader, run.val_items,
                                      run.built.tokenizer, run.device, run.autocast,
                                      run.cfg.batch_size)
    set_train_mode(run.built.module, run.cfg.freeze_image, run.cfg.freeze_text)
    if bad and not run.bad_examples:
        run.bad_examples.extend(bad[:_BAD_EXAMPLES])
    return metrics


def _finish_epoch(run: _Run, state: _State, partial: bool, seconds: float, samples: int
                  ) -> None:
    module = run.built.module
    em = EpochMetrics(
        epoch=state.epoch + 1, step=state.step,
        train_loss=state.loss_sum / max(state.loss_n, 1),
        lr=run.optimizer.param_groups[0]["lr"],
        logit_scale=float(module.logit_scale.detach().exp()),
        samples=state.samples, seconds=seconds, samples_per_s=samples / max(seconds, 1e-9),
        bad_images=state.bad, retrieval=_evaluate(run), partial=partial,
    )
    run.history.append(em)
    with open(run.out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(em.to_json()) + "\n")
    if not partial:
        state.epoch, state.batches_done = state.epoch + 1, 0
        state.loss_sum, state.loss_n, state.samples, state.bad = 0.0, 0, 0, 0
    name = f"step_{state.step}.pt" if partial else f"epoch_{state.epoch}.pt"
    _save_checkpoint(run, state, run.out / "checkpoints" / name)
    run.emit(TrainEvent("epoch", epoch=em.epoch, epochs=run.cfg.epochs, step=state.step,
                        total_steps=run.total_steps, metrics=em, loss=em.train_loss,
                        samples_per_s=em.samples_per_s))


# ---- checkpoints ----------------------------------------------------------------------------
def _save_checkpoint(run: _Run, state: _State, path: Path) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": run.built.module.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler else {},
        "state": dict(vars(state)),
        "rng": rng_state(),
        "data": {"seed": run.cfg.seed, "fingerprint": run.data_fp, "n": len(run.train_ds)},
        "model_cfg": json.dumps(run.built.model_cfg, sort_keys=True),
        "history": [m.to_json() for m in run.history],
    }
    write_checkpoint(payload, path, run.cfg.keep_checkpoints)


def _load_checkpoint(run: _Run, path: Path) -> _State:
    ck = read_checkpoint(path, json.dumps(run.built.model_cfg, sort_keys=True))
    run.built.module.load_state_dict(ck["model"])
    run.optimizer.load_state_dict(ck["optimizer"])
    if run.scaler and ck["scaler"]:
        run.scaler.load_state_dict(ck["scaler"])
    restore_rng(ck["rng"])
    if ck["data"]["fingerprint"] != run.data_fp:
        run.emit(TrainEvent("warning", message="the training data changed since the "
                                               "checkpoint; resuming is no longer exact"))
    state = _State(**ck["state"])
    trim_metrics(run.out / "metrics.jsonl", state.step)
    run.history = [EpochMetrics.from_json(row) for row in ck["history"]]
    return state


# ---- the end --------------------------------------------------------------------------------
def _finalize(run: _Run, state: _State) -> RetrievalMetrics | None:
    """Apply WiSE-FT if asked, write the model folder; returns the final recall."""
    cfg, module = run.cfg, run.built.module
    final = run.history[-1].retrieval if run.history else None
    if cfg.wise_alpha is not None and cfg.wise_alpha != 1.0:
        from safetensors.torch import load_file

        start_path = run.out / "checkpoints" / "start.safetensors"
        if not start_path.is_file():
            raise TrainingError(f"WiSE-FT needs the start weights, missing: {start_path}")
        apply_wise(module, load_file(str(start_path)), cfg.wise_alpha)
        final = _evaluate(run)
        row = {"final": True, "step": state.step, "wise_alpha": cfg.wise_alpha, **final.flat()}
        with open(run.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    built = run.built
    extra = {
        "trained_by": "clipsift train", "init": cfg.init, "arch": cfg.model,
        "epochs": state.epoch, "steps": state.step, "wise_alpha": cfg.wise_alpha,
        "data": cfg.data, "seed": cfg.seed,
        "held_out": final.flat() if final else None,
    }
    folder_cfg = FolderConfig(
        name=cfg.name or run.out.resolve().name, model_cfg=built.model_cfg,
        preprocess=built.preprocess, context_length=built.context_length,
        tokenizer=built.tokenizer_name, extra=extra,
    )
    dtype = torch.float16 if cfg.save_dtype == "fp16" else torch.float32
    save_model_folder(_StateView(module, dtype), folder_cfg, run.out)
    return final


class _StateView:
    """Presents a module's state dict with floating tensors cast to `dtype` for saving."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype) -> None:
        self.module, self.dtype = module, dtype

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.to(self.dtype) if v.is_floating_point() else v
                for k, v in self.module.state_dict().items()}
