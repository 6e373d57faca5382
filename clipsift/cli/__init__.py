"""Command-line app. `main.py` dispatches; each `cmd_*.py` module registers one verb."""
