"""The index: one SQLite store of items and vectors, searched through FAISS."""

from clipsift.index.index import Index, IndexInfo, resolve_index_path

__all__ = ["Index", "IndexInfo", "resolve_index_path"]
