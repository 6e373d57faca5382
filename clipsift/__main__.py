"""`python -m clipsift` runs the CLI."""

from clipsift.cli.main import run

run()
