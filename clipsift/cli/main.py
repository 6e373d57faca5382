"""The `clipsift` command: a thin dispatcher over the library.

Each `clipsift/cli/cmd_<verb>.py` module defines `register(app)`; they are discovered here.
Command modules import only typer at top level, so `clipsift --help` stays instant; heavy
imports (torch, open_clip, faiss) happen inside the command functions.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import typer

from clipsift.errors import ClipsiftError

app = typer.Typer(
    name="clipsift",
    help="Put CLIP models to work on image collections: classify, embed, index, search, "
    "evaluate, filter, dedup, serve, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from clipsift import __version__

        typer.echo(f"clipsift {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Put CLIP models to work on image collections."""


def _register_commands() -> None:
    import clipsift.cli as pkg

    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if mod.name.startswith("cmd_"):
            importlib.import_module(f"clipsift.cli.{mod.name}").register(app)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with `argv` (defaults to sys.argv[1:]); returns the exit status.

    Tests call this in-process. Library errors become a message on stderr and status
    `err.exit_code` (2 for usage/model errors), never a traceback.
    """
    try:
        rv = app(args=argv, prog_name="clipsift", standalone_mode=False)
        if isinstance(rv, int):  # click returns Exit codes when not standalone
            return rv
    except ClipsiftError as err:
        from clipsift.cli.output import print_error

        print_error(str(err))
        return err.exit_code
    except typer.Exit as ex:
        return ex.exit_code
    except KeyboardInterrupt:
        from clipsift.cli.output import print_error

        print_error("interrupted")
        return 130
    except Exception as ex:  # click usage errors
        import click

        if isinstance(ex, click.ClickException):
            ex.show()
            return ex.exit_code
        if isinstance(ex, click.exceptions.Abort):
            return 130
        if os.environ.get("CLIPSIFT_DEBUG"):
            raise
        from clipsift.cli.output import print_error

        print_error(f"internal error: {type(ex).__name__}: {ex}\n"
                    "This is a bug in clipsift; rerun with CLIPSIFT_DEBUG=1 for the traceback "
                    "and report it.")
        return 3
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
