"""`clipsift classify`: zero-shot label probabilities for images."""

from __future__ import annotations

from typing import Annotated

import typer

from clipsift.cli.common import (
    BatchOpt,
    DeviceOpt,
    FastDecodeOpt,
    JsonOpt,
    ModelOpt,
    PrecisionOpt,
    WorkersOpt,
    load_model,
    report_failures,
)
from clipsift.inputs.keys import json_fields, printable


def classify_cmd(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders, globs, .tar shards "
                                               "or file lists.")],
    labels: Annotated[str | None, typer.Option("--labels", "-l",
                                               help="Comma-separated labels.")] = None,
    labels_file: Annotated[str | None, typer.Option(
        "--labels-file", help="UTF-8 file, one label per line.")] = None,
    template: Annotated[list[str] | None, typer.Option(
        "--template", "-t", help="Prompt with {} (or {c}) for the label, literal braces as "
        "{{ }}; repeat to ensemble.")] = None,
    templates: Annotated[str | None, typer.Option(
        "--templates", help="Named template set: imagenet80 or simple.")] = None,
    top: Annotated[int | None, typer.Option("--top", "-k", min=1,
                                            help="Show the K most probable labels.")] = None,
    json_out: JsonOpt = False,
    model: ModelOpt = None,
    device: DeviceOpt = "cpu",
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = None,
    precision: PrecisionOpt = "fp32",
    fast_decode: FastDecodeOpt = False,
) -> None:
    """Label probabilities for each image (softmax over logit_scale x cosine)."""
    import json

    from clipsift.cli.common import fast_decode_notice
    from clipsift.zeroshot.classifier import iter_classify
    from clipsift.zeroshot.templates import parse_labels, resolve_templates

    label_list = parse_labels(labels, labels_file)
    prompts = resolve_templates(template, templates)
    m = load_model(model, device, precision)
    fast_decode_notice(fast_decode)
    failed: list[tuple[str, str]] = []
    total = 0
    for res in iter_classify(m, paths, label_list, prompts, top_k=top, batch_size=batch_size,
                             workers=workers, fast_decode=fast_decode):
        total += 1
        if res.error is not None:
            failed.append((res.source, res.error))
        if json_out:
            d = res.to_dict()
            d.update(json_fields("path", res.source))
            typer.echo(json.dumps(d, ensure_ascii=False))
        elif res.error is None:
            _print_human(res)
    if total == 0:
        from clipsift.errors import UsageError

        raise UsageError(f"no images found in {', '.join(paths)}")
    code = report_failures(failed, total)
    if code:
        raise typer.Exit(code)


def _print_human(res) -> None:
    typer.echo(printable(res.source))
    for s in res.labels:
        bar = "█" * round(s.probability * 20)
        typer.echo(f"  {s.probability:7.2%}  {bar:<20}  {s.label}  (cos {s.score:.3f})")


def register(app: typer.Typer) -> None:
    app.command("classify")(classify_cmd)
