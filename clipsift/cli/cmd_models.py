"""`clipsift models`: list architectures/tags, or describe one model."""

from __future__ import annotations

from typing import Annotated

import typer

from clipsift.cli.common import DeviceOpt


def models_cmd(
    name: Annotated[str | None, typer.Argument(help="Load this model and show its facts.")]
    = None,
    device: DeviceOpt = "cpu",
) -> None:
    """List open_clip ARCH:TAG names, or load NAME and print dim, image size, context."""
    if name is None:
        import open_clip

        from clipsift.models.registry import registered

        for known, description in registered().items():  # mini, hf, hf-hub, plugins
            typer.echo(f"{known}  ({description})" if description else known)
        for arch, tag in open_clip.list_pretrained():
            typer.echo(f"{arch}:{tag}")
        return
    from clipsift.cli.common import load_model

    m = load_model(name, device)
    for key, value in vars(m.info).items():
        typer.echo(f"{key}: {value}")


def register(app: typer.Typer) -> None:
    app.command("models")(models_cmd)
