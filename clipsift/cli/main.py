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
    except Exception as ex:
        if isinstance(ex, _click_errors()):  # unknown option, bad value, missing argument
            ex.show()
            return ex.exit_code
        if isinstance(ex, _click_aborts()):
            return 130
        if os.environ.get("CLIPSIFT_DEBUG"):
            raise
        from clipsift.cli.output import print_error

        print_error(f"internal error: {type(ex).__name__}: {ex}\n"
                    "This is a bug in clipsift; rerun with CLIPSIFT_DEBUG=1 for the traceback "
                    "and report it.")
        return 3
    return 0


def _click_errors() -> tuple[type[Exception], ...]:
    """Click's usage-error base classes: typer >= 0.20 ships its own copy of click
    (`typer._click`), older typer uses the `click` package; accept both."""
    return _from_click("exceptions.ClickException")


def _click_aborts() -> tuple[type[BaseException], ...]:
    return (typer.Abort, *_from_click("exceptions.Abort"))


def _from_click(attr: str) -> tuple[type, ...]:
    """`attr` ("module.Class") from each click copy that is installed and defines it."""
    module_name, _, cls_name = attr.rpartition(".")
    found: list[type] = []
    for package in ("typer._click", "click"):
        try:
            module = importlib.import_module(f"{package}.{module_name}")
        except ImportError:
            continue
        cls = getattr(module, cls_name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
