"""`clipsift train`: contrastive training or fine-tuning on image–caption pairs."""

from __future__ import annotations

from typing import Annotated, Any

import typer

Opt = typer.Option


def train_cmd(
    data: Annotated[str, Opt("--data", "-d", help="Pairs: a folder of images with same-named "
                             ".txt captions, a .csv/.parquet manifest, or .tar shards.")],
    output: Annotated[str, Opt("--output", "-o", help="Run folder; ends up a model folder.")],
    model: Annotated[str | None, Opt("--model", "-m", help="From scratch: an open_clip "
                                     "architecture (ViT-B-32) or a model-config JSON file.")
                     ] = None,
    init: Annotated[str | None, Opt("--init", help="Fine-tune: a model name (ViT-B-32:openai, "
                                    "hf-hub:..., mini) or a clipsift model folder.")] = None,
    batch_size: Annotated[int, Opt("--batch-size", "-b", min=1)] = 64,
    epochs: Annotated[int, Opt("--epochs", "-e", min=1)] = 10,
    lr: Annotated[float | None, Opt("--lr", help="Peak learning rate (warmup, then cosine); "
                                    "default 5e-4 from scratch, 1e-5 fine-tuning.")] = None,
    warmup_steps: Annotated[int, Opt("--warmup-steps", min=0)] = 200,
    weight_decay: Annotated[float, Opt("--weight-decay", min=0.0)] = 0.1,
    grad_accum: Annotated[int, Opt("--grad-accum", min=1,
                                   help="Micro-batches per optimizer step.")] = 1,
    precision: Annotated[str, Opt("--precision", help="auto, fp32, bf16 (autocast) or fp16 "
                                  "(CUDA).")] = "auto",
    augment: Annotated[float, Opt("--augment", min=0.0, max=1.0, help="Augmentation strength, "
                                  "0 (off) to 1 (strong).")] = 0.5,
    backgrounds: Annotated[str | None, Opt("--backgrounds", help="Folder of photos put under "
                                           "transparent images (clip art, cut-outs).")
                           ] = None,
    background_share: Annotated[float, Opt("--background-share", min=0.0, max=1.0, help="How "
                                           "often a transparent image goes on a background "
                                           "photo (at --augment 1).")] = 0.5,
    freeze_text: Annotated[bool, Opt("--freeze-text", help="Keep the text tower fixed.")
                           ] = False,
    freeze_image: Annotated[bool, Opt("--freeze-image", help="Keep the image tower fixed "
                                      "(locked-image tuning).")] = False,
    wise_alpha: Annotated[float | None, Opt("--wise-alpha", min=0.0, max=1.0, help="WiSE-FT: "
                                            "save (1-a)*start + a*fine-tuned.")] = None,
    val_fraction: Annotated[float, Opt("--val-fraction", min=0.0, max=0.5,
                                       help="Share of groups held out for recall@k.")] = 0.05,
    seed: Annotated[int, Opt("--seed")] = 0,
    workers: Annotated[int | None, Opt("--workers", min=0, help="Data-loading processes "
                                       "(default: auto).")] = None,
    threads: Annotated[int | None, Opt("--threads", min=1, help="Torch threads (default: "
                                       "torch's choice).")] = None,
    image_size: Annotated[int | None, Opt("--image-size", min=8, help="Override the "
                                          "architecture's image size (from scratch).")] = None,
    context_length: Annotated[int | None, Opt("--context-length", min=4, help="Override the "
                                              "text context length (from scratch).")] = None,
    max_steps: Annotated[int | None, Opt("--max-steps", min=1, help="Stop after this many "
                                         "optimizer steps.")] = None,
    checkpoint_every: Annotated[int | None, Opt("--checkpoint-every", min=1, help="Also "
                                                 "checkpoint every N steps within an epoch.")
                                ] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue from OUTPUT/checkpoints.")] = False,
    overwrite: Annotated[bool, Opt("--overwrite", help="Start afresh in an OUTPUT that holds "
                                   "a run.")] = False,
    device: Annotated[str, Opt("--device", help="auto, cpu or cuda.")] = "auto",
    save_dtype: Annotated[str, Opt("--save-dtype", help="fp32 or fp16 weights.")] = "fp32",
    name: Annotated[str | None, Opt("--name", help="Model name to record.")] = None,
    image_column: Annotated[str, Opt("--image-column")] = "image",
    caption_column: Annotated[str, Opt("--caption-column")] = "caption",
    group_column: Annotated[str, Opt("--group-column")] = "group",
    json_out: Annotated[bool, Opt("--json", help="Print the result as JSON on stdout.")
                        ] = False,
) -> None:
    """Train a CLIP model from scratch (--model) or fine-tune one (--init) on your pairs.

    Every epoch reports the loss and image→text / text→image recall@1/5/10 on a held-out
    split, writes OUTPUT/metrics.jsonl and a checkpoint; --resume continues a stopped run.
    """
    import os

    from clipsift.train import TrainConfig

    if workers is None:
        workers = min(4, max(0, (os.cpu_count() or 1) - 1))
    cfg = TrainConfig(
        data=data, output=output, model=model, init=init, batch_size=batch_size,
        epochs=epochs, lr=lr, warmup_steps=warmup_steps, weight_decay=weight_decay,
        grad_accum=grad_accum, precision=precision, augment=augment, backgrounds=backgrounds,
        background_share=background_share,
        freeze_text=freeze_text,
        freeze_image=freeze_image, wise_alpha=wise_alpha, val_fraction=val_fraction, seed=seed,
        workers=workers, threads=threads, image_size=image_size, context_length=context_length,
        max_steps=max_steps, checkpoint_every=checkpoint_every, resume=resume,
        overwrite=overwrite, device=device, save_dtype=save_dtype, name=name,
        image_column=image_column, caption_column=caption_column, group_column=group_column,
    ).validate()
    result = _run_with_progress(cfg)
    _print_result(result, json_out)


def _recall_text(metrics: Any) -> str:
    if not metrics or not metrics.n_images:
        return "no held-out split"
    i2t = "/".join(f"{100 * v:.1f}" for v in metrics.image_to_text.values())
    t2i = "/".join(f"{100 * v:.1f}" for v in metrics.text_to_image.values())
    ks = "/".join(str(k) for k in metrics.image_to_text)
    return f"R@{ks} i→t {i2t}  t→i {t2i}  (n={metrics.n_images})"


def _run_with_progress(cfg: Any) -> Any:
    from rich.console import Console

    from clipsift.cli.output import progress_bar
    from clipsift.train import train

    console = Console(stderr=True, highlight=False)
    with progress_bar("{task.description}",
                      "{task.fields[speed]:>7.1f} samples/s  loss {task.fields[loss]}",
                      console=console) as progress:
        task = progress.add_task("training", total=None, speed=0.0, loss="-")

        def on_progress(ev: Any) -> None:
            if ev.kind == "start":
                progress.console.print(ev.message)
                progress.update(task, total=ev.total_steps, completed=ev.step)
            elif ev.kind == "step":
                loss = "-" if ev.loss is None else f"{ev.loss:.4f}"
                progress.update(task, completed=ev.step, speed=ev.samples_per_s, loss=loss,
                                description=f"epoch {ev.epoch}/{ev.epochs}")
            elif ev.kind == "epoch":
                m = ev.metrics
                extra = f", {m.bad_images} bad images skipped" if m.bad_images else ""
                progress.console.print(
                    f"epoch {m.epoch}/{ev.epochs}{' (partial)' if m.partial else ''}: "
                    f"loss {m.train_loss:.4f}  {_recall_text(m.retrieval)}  "
                    f"{m.samples_per_s:.1f} samples/s{extra}")
            elif ev.kind == "warning":
                progress.console.print(f"[yellow]warning:[/] {ev.message}")

        return train(cfg, on_progress=on_progress)


def _print_result(result: Any, json_out: bool) -> None:
    import json

    if json_out:
        payload = {
            "output": str(result.output), "epochs": result.epochs, "steps": result.steps,
            "n_train": result.n_train, "n_val": result.n_val,
            "bad_images": result.bad_images, "wise_alpha": result.wise_alpha,
            "final": result.final.flat() if result.final else None,
            "history": [m.to_json() for m in result.history],
            "seconds": round(result.seconds, 3),
        }
        typer.echo(json.dumps(payload, ensure_ascii=False))
        return
    wise = f" (WiSE-FT alpha {result.wise_alpha})" if result.wise_alpha is not None else ""
    typer.echo(f"model folder: {result.output}{wise}")
    typer.echo(f"final held-out: {_recall_text(result.final)}")
    if result.bad_images:
        typer.echo(f"{result.bad_images} bad images skipped, e.g.:", err=True)
        for example in result.bad_examples[:5]:
            typer.echo(f"  {example}", err=True)


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
