"""Options and helpers shared by CLI commands (kept light: only typer at import)."""

from __future__ import annotations

from typing import Annotated

import typer

ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="Model name: ViT-B-32:openai (default), ARCH:TAG, ARCH:/path/ckpt, "
    "hf:ORG/NAME, hf:/folder, a clipsift model folder, or 'mini' (bundled, offline).",
    envvar="CLIPSIFT_MODEL")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
WorkersOpt = Annotated[int | None, typer.Option(
    "--workers", min=0, help="Decode worker processes (0 = decode in-process; default: auto).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line on stdout.")]
EngineOpt = Annotated[str, typer.Option(
    "--engine", help="local (processes on this machine) or ray (Ray Data; local Ray or "
    "--ray-address).")]
RayAddressOpt = Annotated[str | None, typer.Option(
    "--ray-address", help="Join this Ray cluster ('auto', 'ray://head:10001') instead of "
    "starting a local Ray.")]
RayCpusOpt = Annotated[int | None, typer.Option(
    "--ray-cpus", min=1, help="CPUs of the local Ray (default: all).")]
EncodersOpt = Annotated[int, typer.Option(
    "--encoders", min=1, help="Ray encoder actors (copies of the model) running at once.")]
FastDecodeOpt = Annotated[bool, typer.Option(
    "--fast-decode", help="Decode large JPEGs at 1/2-1/8 scale (never below the model's "
    "input size): faster, approximate vectors (cosine to exact in docs/benchmarks.md). "
    "Default: every image decoded whole, exactly.")]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", help="fp32 (reference), fp32-onnx (CPU: same numbers, image tower in "
    "ONNX Runtime), int8 (CPU: image tower in ONNX Runtime; ViT-B-32 runs measured "
    "1.25-1.8x fp32 end to end, docs/benchmarks.md), bf16 (CUDA, or CPUs with "
    "AVX512-BF16/AMX) or fp16 (CUDA).",
    envvar="CLIPSIFT_PRECISION")]


def load_model(name: str | None, device: str = "cpu", precision: str = "fp32"):
    """Load a model for a command; print the fallback notice (if any) on stderr."""
    from clipsift.cli.output import notice
    from clipsift.models import load

    model = load(name, device=device, precision=precision)
    if model.notice:
        notice(model.notice)
    return model


def report_failures(failed: list[tuple[str, str]], total: int) -> int:
    """List failed inputs on stderr; return the exit status (1 if any failed)."""
    from clipsift.cli.output import notice

    if not failed:
        return 0
    from clipsift.inputs.keys import printable

    notice(f"{len(failed)} of {total} input(s) failed:")
    for source, reason in failed:
        notice(f"  {printable(source)}: {reason}")
    return 1


def make_engine_for(name: str, workers, ray_address, ray_cpus, encoders,
                    fast_decode: bool = False):
    """The execution engine for a bulk command's --engine and --fast-decode options."""
    from clipsift.engines import make_engine

    fast_decode_notice(fast_decode)
    return make_engine(name, workers=workers, ray_address=ray_address, ray_cpus=ray_cpus,
                       encoders=encoders, fast_decode=fast_decode)


def fast_decode_notice(fast_decode: bool) -> None:
    """With --fast-decode, say on stderr that the results are approximate."""
    if fast_decode:
        from clipsift.cli.output import notice

        notice("note: --fast-decode: large JPEGs are decoded at reduced scale; vectors and "
               "scores are approximate (not equal to an exact run)")


def install_sigint(stop):
    """First Ctrl-C sets `stop` (finish the batch, keep work); a second one interrupts."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    return signal.signal(signal.SIGINT, handler)
