"""What the sifting commands (filter, dedup, unique) read: image sources or one index."""

from __future__ import annotations

from typing import Annotated

import typer

from clipsift.cli.common import make_engine_for

SourcesArg = Annotated[list[str] | None, typer.Argument(
    help="Image files, folders, globs, .tar shards, file lists, or one clipsift index (.db).")]
IndexOpt = Annotated[str | None, typer.Option(
    "--index", "-i", help="Use a clipsift index (file or name): its stored vectors are used, "
    "nothing is re-encoded.")]


def split_sources(sources: list[str] | None, index: str | None) -> tuple[list[str], str | None]:
    """A single `.db` source that is a file is taken as an index."""
    from pathlib import Path

    from clipsift.errors import UsageError

    sources = list(sources or [])
    if index is None and len(sources) == 1 and sources[0].endswith(".db") \
            and Path(sources[0]).is_file():
        return [], sources[0]
    if index is not None and sources:
        raise UsageError("give image sources or --index, not both")
    if index is None and not sources:
        raise UsageError("nothing to read: give files, folders, globs, tar shards, lists or "
                         "--index INDEX")
    return sources, index


def model_for(name: str | None, device: str, index: str | None):
    """The named model; for an index without --model, the model the index records (at the
    precision its vectors were made at)."""
    from clipsift.cli.common import load_model

    if index is not None and name is None:
        from clipsift.index.index import Index

        with Index.open(index, device=device) as idx:
            return idx.model
    return load_model(name, device)


def collection(sources, index, model, device, batch_size, engine, engine_opts):
    from clipsift.sift.dedup import collection_from_index, collection_from_inputs

    inputs, index_path = split_sources(sources, index)
    if index_path is not None:
        return collection_from_index(index_path)
    loaded = model_for(model, device, None)
    with make_engine_for(engine, *engine_opts) as eng:
        return collection_from_inputs(loaded, inputs, engine=eng, batch_size=batch_size)
