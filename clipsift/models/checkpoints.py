"""Read checkpoint files without ever executing code from them.

Accepted: `.safetensors`; PyTorch zip/legacy files through `torch.load(weights_only=True)`;
TorchScript archives (OpenAI's `ViT-B-32.pt` format) through a restricted unpickler that
only rebuilds tensors: script classes become inert attribute bags, any other global
(e.g. `os.system`) is refused.

`read_checkpoint` also reports what the file says about how the weights were trained:
OpenAI's release formats (the TorchScript archive, or its state dict, which carries
`input_resolution`/`context_length`/`vocab_size`) are QuickGELU models, and a TorchScript
archive names its modules' classes (`QuickGELU` or `GELU`). open_clip's own
`load_openai_model` treats both OpenAI forms the same way.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipsift.errors import CheckpointError

# Extra entries OpenAI's checkpoints carry that are not model weights (the TorchScript
# archive and its `state_dict()`): they mark OpenAI's release format.
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64, "IntStorage": torch.int32, "ShortStorage": torch.int16,
    "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
# TorchScript wraps typed lists in these builders; they only make a list from a list.
_JIT_LIST_BUILDERS = ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")


@dataclass(frozen=True)
class Checkpoint:
    """Weights read from a file, and what the file says about how they were trained.

    Attributes:
        state_dict: flat {name: tensor}; a `state_dict` wrapper, `module.` prefixes and
            OpenAI's non-weight entries removed.
        openai: OpenAI's release format: a TorchScript archive, or a state dict carrying
            OpenAI's `input_resolution`/`context_length`/`vocab_size` entries.
        quick_gelu: the activation the weights were trained with, when the file says so
            (the module classes of a TorchScript archive; OpenAI's state dicts are QuickGELU
            models); None when the file does not say (the architecture config decides).
    """

    state_dict: dict[str, torch.Tensor]
    openai: bool = False
    quick_gelu: bool | None = None


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file safely (no code from the file ever runs).

    Args:
        path: a .safetensors file, a torch.save file of tensors/dicts, or a TorchScript
            archive (OpenAI CLIP `.pt`).
    Returns:
        The weights and what the file says about them (see `Checkpoint`).
    Raises:
        CheckpointError: a missing, empty, damaged or non-checkpoint file, or a pickle that
            needs arbitrary objects; one line naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist or is not a file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(p)!r} is empty (0 bytes); download it again")
    classes: set[str] | None = None
    if p.suffix == ".safetensors":
        raw = _load_safetensors(p)
    elif is_torchscript_archive(p):
        raw, classes = _read_torchscript(p)
    else:
        raw = _torch_load_weights_only(p)
    sd = _clean(raw, p)
    openai = classes is not None or any(key in sd for key in NON_WEIGHT_KEYS)
    for key in NON_WEIGHT_KEYS:
        sd.pop(key, None)
    quick = _script_activation(classes) if classes is not None else (True if openai else None)
    return Checkpoint(sd, openai, quick)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat `{name: tensor}` state dict of a checkpoint file (`read_checkpoint`)."""
    return read_checkpoint(path).state_dict


def _script_activation(classes: set[str]) -> bool:
    """QuickGELU or not, from a TorchScript archive's module classes. An archive that names
    neither activation follows OpenAI's release convention (QuickGELU)."""
    names = {c.rpartition(".")[2] for c in classes}
    return "QuickGELU" in names or "GELU" not in names


def is_torchscript_archive(path: str | Path) -> bool:
    """True for a TorchScript zip (it holds a `code/` folder or `constants.pkl`)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any("/code/" in n or n.endswith("/constants.pkl") for n in names)


def _damaged(path: Path, what: str, ex: BaseException) -> CheckpointError:
    """The error for a file that is cut short or corrupted (one line, with the cause)."""
    cause = (str(ex).strip().splitlines() or [type(ex).__name__])[0][:200]
    return CheckpointError(f"cannot read {what} {str(path)!r}: the file is damaged or truncated "
                           f"({type(ex).__name__}: {cause}); download it again")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as ex:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read safetensors file {str(path)!r}: {ex}") from ex


#: How a torch.save file starts: a zip archive (torch >= 1.6) or a pickle (protocol 2+).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def _torch_load_weights_only(path: Path) -> Any:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head.startswith(_TORCH_MAGIC):
        raise CheckpointError(
            f"{str(path)!r} is not a checkpoint file (not safetensors, not a PyTorch zip or "
            "pickle file); check the path, or download the weights again")
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise _damaged(path, "checkpoint", zipfile.BadZipFile("no zip central directory"))
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as ex:
        raise CheckpointError(
            f"refused to load {str(path)!r}: it is not a plain weights file and loading it "
            f"would run code from the file ({str(ex).splitlines()[0]}). If you trust it, "
            "convert it to .safetensors first."
        ) from ex
    except Exception as ex:  # torch raises RuntimeError/EOFError/... for broken files
        raise _damaged(path, "checkpoint", ex) from ex


def _clean(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{str(path)!r} holds no state dict (found {type(obj).__name__})")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


# ---- TorchScript archives ----------------------------------------------------------------
class _ScriptObject:
    """Inert stand-in for a TorchScript class instance: it only records its attributes."""

    def __init__(self, *args: Any) -> None:
        self.attrs: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.attrs = state if isinstance(state, dict) else {}


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Any, stride: Any, *_: Any):
    return storage.as_strided(tuple(size), tuple(stride), offset)


class _Refused(pickle.UnpicklingError):
    """A global the restricted unpickler does not allow (possible code execution)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self._zf = zf
        self._prefix = prefix
        self.script_classes: set[str] = set()  # "__torch__.open_clip.transformer.QuickGELU"

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            self.script_classes.add(f"{module}.{name}")
            return _ScriptObject
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, *_: data
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "torch.jit._pickle" and name in _JIT_LIST_BUILDERS:
            return list
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return lambda value, _tag: value
        raise _Refused(f"global {module}.{name} is not allowed in a weights file")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        _tag, dtype, key, _location, _numel = pid
        raw = self._zf.read(f"{self._prefix}data/{key}")
        if not raw:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(bytearray(raw), dtype=dtype)


def _read_torchscript(path: str | Path) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Parameters and buffers of a TorchScript archive, and the names of its module
    classes, read without running anything from it."""
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as zf:
            data_pkl = [n for n in zf.namelist()
                        if n.endswith("/data.pkl") and n.count("/") == 1]
            if not data_pkl:
                raise CheckpointError(f"{str(p)!r} is a zip but not a TorchScript archive "
                                      "(no data.pkl); check the path")
            prefix = data_pkl[0][: -len("data.pkl")]
            unpickler = _RestrictedUnpickler(zf.read(data_pkl[0]), zf, prefix)
            root = unpickler.load()
            out: dict[str, torch.Tensor] = {}
            _collect(root, "", out)
    except _Refused as ex:
        raise CheckpointError(f"refused to load TorchScript archive {str(p)!r}: {ex}") from ex
    except CheckpointError:
        raise
    except Exception as ex:  # bad CRC, short records, truncated pickles, wrong shapes...
        raise _damaged(p, "TorchScript archive", ex) from ex
    return out, unpickler.script_classes


def _collect(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    if not isinstance(obj, _ScriptObject):
        return
    for name, value in obj.attrs.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value.clone()
        elif isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{name}.", out)
