"""The model registry: a name is parsed once into a `ModelRef`, then its loader is picked
from a table.

Names and what they parse to (`kind`):

    mini                                    "mini"       the small model bundled offline
    hf:ORG/NAME, hf:/folder, /hf-folder     "hf"         Hugging Face CLIP / Chinese-CLIP
    hf-hub:ORG/NAME, hf-hub:/f, /folder     "hf-hub"     an open_clip hub repo (or a copy)
    ARCH:TAG (ViT-B-32:openai)              "arch-tag"   open_clip's zoo
    ARCH:/path/weights.pt|.bin|.safetensors "arch-file"  a checkpoint for ARCH
    /path/to/folder                         "folder"     a clipsift model folder
    NAME, NAME:ARG                          NAME         a model registered by a plugin

Your own model: a module that calls `register("mymodel", loader)` at import; name it (a
module name or a .py file, several separated by ':' or ',') in `CLIPSIFT_PLUGINS` and
every `clipsift.load`, CLI `--model` and subprocess of the same environment sees it:

    # my_models.py
    from clipsift.models.registry import register
    register("mymodel", lambda ref, device: MyModel(size=ref.ref or "base"))

    $ CLIPSIFT_PLUGINS=/path/to/my_models.py clipsift classify photos/ -m mymodel:large ...
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clipsift.errors import ModelNotAvailable, UnknownModel, UsageError

if TYPE_CHECKING:
    from clipsift.models.base import ClipModel

PLUGINS_ENV = "CLIPSIFT_PLUGINS"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True)
class ModelRef:
    """A model name, parsed.

    Attributes:
        name: the name as given (stripped).
        kind: the registry key whose loader builds it (see the module docstring).
        ref: what the loader needs: a repo id, a path, a tag, a plugin's argument ("" if
            none).
        arch: the open_clip architecture, for the "arch-tag" and "arch-file" kinds.
    """

    name: str
    kind: str
    ref: str = ""
    arch: str = ""

    def source(self) -> str:
        """The name, portable to another process: local paths made absolute (`ARCH:/path`,
        `hf:/path`, a folder); other names as given ("mini", "ViT-B-32:openai")."""
        if self.kind == "arch-file":
            return f"{self.arch}:{_absolute(self.ref)}"
        if self.kind in ("hf", "hf-hub", "folder") and _pathlike(self.ref):
            absolute = _absolute(self.ref)
            return absolute if self.name == self.ref else f"{self.kind}:{absolute}"
        return self.name


Loader = Callable[[ModelRef, str], "ClipModel"]


@dataclass(frozen=True)
class _Entry:
    loader: Loader
    named: bool  # typed by users as NAME or NAME:ARG (False: a structural kind)
    description: str


_TABLE: dict[str, _Entry] = {}
_LOCK = threading.RLock()
_PLUGINS_DONE: set[str] = set()


def register(name: str, loader: Loader, description: str = "") -> None:
    """Make `name` (and `name:ARG`) load through `loader(ref, device)`.

    Args:
        name: the model name users type; letters, digits, '-', '_' and '.'.
        loader: called with the parsed ModelRef (`ref.ref` is ARG, or "") and the device
            string; returns a ClipModel.
        description: one line for `clipsift models`.
    Raises:
        UsageError: a name with other characters.

    A later registration of the same name replaces the earlier one.
    """
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise UsageError(f"cannot register model name {name!r}: use letters, digits, '-', "
                         "'_' and '.'")
    with _LOCK:
        if name in _TABLE and not _TABLE[name].named:
            raise UsageError(f"cannot register model name {name!r}: it is a built-in kind")
        _TABLE[name] = _Entry(loader, True, description)


def unregister(name: str) -> None:
    """Remove a name registered with `register` (no error when it is not there)."""
    with _LOCK:
        entry = _TABLE.get(name)
        if entry is not None and entry.named:
            del _TABLE[name]


def _register_kind(kind: str, loader: Loader) -> None:
    """A structural kind (recognised by its shape, not typed as a name)."""
    _TABLE[kind] = _Entry(loader, False, "")


def registered() -> dict[str, str]:
    """Names users can type (built-in and from plugins) -> description."""
    load_plugins()
    with _LOCK:
        return {k: e.description for k, e in _TABLE.items() if e.named}


def parse_name(name: str) -> ModelRef:
    """Parse a model name once into a ModelRef (no weights are touched).

    Raises:
        UsageError: an empty name.
        ModelNotAvailable: a path that does not exist or holds no known model.
        UnknownModel: a checkpoint file given without its architecture.
    """
    text = name.strip()
    if not text:
        raise UsageError("empty model name; e.g. --model mini or --model ViT-B-32:openai")
    load_plugins()
    head, sep, rest = text.partition(":")
    entry = _TABLE.get(head)
    if entry is not None and entry.named:
        return ModelRef(text, head, rest)
    if sep and not _path_shaped(head):
        kind = "arch-file" if _path_shaped(rest) or rest.endswith(CHECKPOINT_SUFFIXES) \
            else "arch-tag"
        return ModelRef(text, kind, rest, arch=head)
    if _pathlike(text):
        return _parse_path(text)
    return ModelRef(text, "word", text)


def load_ref(ref: ModelRef, device: str) -> ClipModel:
    """Build the model a parsed name stands for, with the loader its kind registered."""
    with _LOCK:
        entry = _TABLE.get(ref.kind)
    if entry is None:  # pragma: no cover - parse_name only yields registered kinds
        raise unknown_model(ref.name)
    return entry.loader(ref, device)


def unknown_model(word: str, what: str = "model") -> UnknownModel:
    """UnknownModel for `word`, suggesting close registered names and open_clip
    architectures (`mimi` -> mini)."""
    from clipsift.models.openclip_loader import known_archs

    candidates = [*registered(), *known_archs()]
    by_lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(by_lower[c] for c in close)}?" if close else ""
    return UnknownModel(
        f"unknown {what} {word!r}.{hint} Names: mini, ARCH:TAG, ARCH:/path/weights, "
        "hf:ORG/NAME, hf-hub:ORG/NAME, a model folder; `clipsift models` lists them.")


# ---- plugins -------------------------------------------------------------------------------
def load_plugins() -> None:
    """Import the modules named in $CLIPSIFT_PLUGINS (once each); they call `register`.

    Raises:
        UsageError: an entry that cannot be imported (the error names it).
    """
    entries = [e.strip() for part in os.environ.get(PLUGINS_ENV, "").split(os.pathsep)
               for e in part.split(",") if e.strip()]
    with _LOCK:
        for entry in entries:
            if entry in _PLUGINS_DONE:
                continue
            _PLUGINS_DONE.add(entry)
            try:
                _import_plugin(entry)
            except Exception as ex:
                _PLUGINS_DONE.discard(entry)
                raise UsageError(f"{PLUGINS_ENV} names {entry!r}, which cannot be imported: "
                                 f"{type(ex).__name__}: {ex}") from ex


def _import_plugin(entry: str) -> None:
    """Import a plugin by module name, or a .py file by its own name with its folder put on
    sys.path, so that decode worker processes (which get this sys.path) can unpickle what
    it defines (a model's preprocess function, for one)."""
    if not (entry.endswith(".py") or os.sep in entry):
        importlib.import_module(entry)
        return
    path = os.path.realpath(os.path.expanduser(entry))
    for module in list(sys.modules.values()):  # already imported, e.g. under its package
        file = getattr(module, "__file__", None)
        if file and os.path.realpath(file) == path:
            return
    if not os.path.isfile(path):
        raise ImportError(f"no such file: {path}")
    folder, stem = os.path.split(path)
    stem = stem.removesuffix(".py")
    clash = sys.modules.get(stem)
    if clash is not None:
        raise ImportError(f"a module named {stem!r} is already imported "
                          f"({getattr(clash, '__file__', 'built in')}); rename the file")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = importlib.import_module(stem)
    if os.path.realpath(getattr(module, "__file__", "") or "") != path:
        raise ImportError(f"another module named {stem!r} is found first "
                          f"({module.__file__}); rename the file")


# ---- parsing helpers -----------------------------------------------------------------------
def _path_shaped(text: str) -> bool:
    return os.sep in text or text.startswith((".", "~"))


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _pathlike(text: str) -> bool:
    return _path_shaped(text) or Path(text).exists()


def _parse_path(text: str) -> ModelRef:
    from clipsift.models.folder import CONFIG_NAME, HUB_CONFIG

    path = Path(text).expanduser()
    for marker, kind in ((CONFIG_NAME, "folder"), (HUB_CONFIG, "hf-hub"), ("config.json", "hf")):
        if (path / marker).is_file():
            return ModelRef(text, kind, text)
    if path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
        raise UnknownModel(f"{text!r} is a checkpoint file: say which architecture it is, "
                           f"e.g. ViT-B-32:{text}")
    reason = ("no such file or folder" if not path.exists() else
              f"no {CONFIG_NAME} (clipsift), {HUB_CONFIG} (open_clip) or config.json "
              "(Hugging Face) there")
    raise ModelNotAvailable(text, [str(path)], reason)


# ---- the built-in kinds ------------------------------------------------------------------
def _load_mini(ref: ModelRef, device: str) -> ClipModel:
    from clipsift.models import MINI_DIR, mini_available
    from clipsift.models.openclip_loader import load_folder

    if ref.ref:
        raise UsageError(f"'mini' takes no argument (got {ref.name!r})")
    if not mini_available():
        raise ModelNotAvailable("mini", [str(MINI_DIR)], "the bundled model is missing from "
                                "this installation; reinstall clipsift")
    return load_folder(MINI_DIR, device, name="mini")


def _load_hf(ref: ModelRef, device: str) -> ClipModel:
    from clipsift.models import hf_backend, resolve

    if not ref.ref:
        raise UsageError("say which model: hf:ORG/NAME or hf:/path/to/folder")
    local = Path(ref.ref).expanduser()
    if ref.ref.startswith(("/", ".", "~")) or local.is_dir():
        if not hf_backend.is_hf_folder(local):
            raise ModelNotAvailable(ref.name, [str(local)], "no config.json in that folder")
        return hf_backend.HFClipModel(str(local), ref.name, device)
    folder = resolve.hf_snapshot(ref.ref, resolve.Lookup(ref.name))
    return hf_backend.HFClipModel(folder, ref.name, device)


def _load_hub(ref: ModelRef, device: str) -> ClipModel:
    from clipsift.models.openclip_loader import load_hub

    if not ref.ref:
        raise UsageError("say which model: hf-hub:ORG/NAME or hf-hub:/path/to/folder")
    return load_hub(ref.ref, device)


def _load_tag(ref: ModelRef, device: str) -> ClipModel:
    from clipsift.models.openclip_loader import load_tag

    return load_tag(ref.arch, ref.ref, device)


def _load_file(ref: ModelRef, device: str) -> ClipModel:
    from clipsift.models.openclip_loader import load_file

    return load_file(ref.arch, ref.ref, device)


def _load_folder(ref: ModelRef, device: str) -> ClipModel:
    from clipsift.models.openclip_loader import load_folder

    return load_folder(ref.ref, device)


def _load_word(ref: ModelRef, device: str) -> ClipModel:
    """A bare word that is no registered name: an architecture without weights, or a typo."""
    from clipsift.models.openclip_loader import is_arch

    if is_arch(ref.name):
        raise UnknownModel(f"say which weights to use for {ref.name}: {ref.name}:TAG or "
                           f"{ref.name}:/path; `clipsift models` lists the tags")
    if ref.name.endswith(CHECKPOINT_SUFFIXES):
        raise UnknownModel(f"{ref.name!r} is a checkpoint file: say which architecture it is, "
                           f"e.g. ViT-B-32:{ref.name}")
    raise unknown_model(ref.name)


register("mini", _load_mini, "the small model bundled with clipsift, works offline")
register("hf", _load_hf, "hf:ORG/NAME or hf:/folder: Hugging Face CLIPModel / ChineseCLIPModel")
register("hf-hub", _load_hub, "hf-hub:ORG/NAME or hf-hub:/folder: an open_clip hub repo")
for _kind, _loader in (("arch-tag", _load_tag), ("arch-file", _load_file),
                       ("folder", _load_folder), ("word", _load_word)):
    _register_kind(_kind, _loader)
