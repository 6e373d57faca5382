"""`clipsift embed` (images/texts -> Parquet) and `clipsift similarity` (cosine matrix)."""

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


def embed_cmd(
    paths: Annotated[list[str] | None, typer.Argument(help="Images: files, folders, globs, "
                                                      ".tar shards, file lists.")] = None,
    text: Annotated[list[str] | None, typer.Option("--text", help="A text to embed; repeat.")]
    = None,
    output: Annotated[str, typer.Option("--output", "-o", help="Parquet file to write.")]
    = "embeddings.parquet",
    model: ModelOpt = None,
    device: DeviceOpt = "cpu",
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = None,
    precision: PrecisionOpt = "fp32",
    fast_decode: FastDecodeOpt = False,
) -> None:
    """Embed images and texts into a Parquet file (kind, source, embedding)."""
    from clipsift.cli.common import fast_decode_notice
    from clipsift.embed import embed_to_parquet
    from clipsift.errors import UsageError

    if not paths and not text:
        raise UsageError("nothing to embed: give image paths and/or --text")
    m = load_model(model, device, precision)
    fast_decode_notice(fast_decode and bool(paths))
    s = embed_to_parquet(m, paths or [], text or [], output, batch_size=batch_size,
                         workers=workers, fast_decode=fast_decode)
    typer.echo(f"wrote {s.images} image and {s.texts} text embedding(s) (dim {m.dim}, "
               f"{m.name}) to {s.output}", err=True)
    code = report_failures(s.failed, s.images + len(s.failed))
    if code:
        raise typer.Exit(code)


def similarity_cmd(
    images: Annotated[list[str], typer.Option("--images", "-i", help="Image inputs; repeat.")],
    texts: Annotated[list[str], typer.Option("--texts", "-t", help="Texts; repeat.")],
    json_out: JsonOpt = False,
    model: ModelOpt = None,
    device: DeviceOpt = "cpu",
    precision: PrecisionOpt = "fp32",
    fast_decode: FastDecodeOpt = False,
) -> None:
    """Print the cosine-similarity matrix between images (rows) and texts (columns)."""
    import json

    from clipsift.cli.common import fast_decode_notice
    from clipsift.embed import similarity

    m = load_model(model, device, precision)
    fast_decode_notice(fast_decode)
    res = similarity(m, images, texts, fast_decode=fast_decode)
    if json_out:
        for key, row in zip(res.images, res.cosine, strict=True):
            typer.echo(json.dumps({**json_fields("path", key), "cosine": dict(
                zip(res.texts, map(float, row), strict=True))}, ensure_ascii=False))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("image", *res.texts, title=f"cosine similarity ({m.name})")
        for key, row in zip(res.images, res.cosine, strict=True):
            best = int(row.argmax()) if len(row) else -1
            table.add_row(printable(key), *[f"[bold]{v:.3f}[/]" if j == best else f"{v:.3f}"
                                            for j, v in enumerate(row)])
        Console(soft_wrap=True).print(table)
    code = report_failures(res.failed, len(res.images) + len(res.failed))
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("embed")(embed_cmd)
    app.command("similarity")(similarity_cmd)
