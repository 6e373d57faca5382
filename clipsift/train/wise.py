"""WiSE-FT: interpolate fine-tuned weights back towards the starting weights.

    theta(alpha) = (1 - alpha) * theta_start + alpha * theta_finetuned

alpha = 0 gives the starting weights exactly, alpha = 1 the fine-tuned weights exactly;
values in between usually keep most of the zero-shot skill of the start while keeping
most of the gain on the fine-tuning domain (Wortsman et al., "Robust fine-tuning of
zero-shot models", 2022).

Example:
    >>> start = {"w": torch.zeros(2)}
    >>> tuned = {"w": torch.ones(2)}
    >>> interpolate_weights(start, tuned, 0.25)["w"]
    tensor([0.2500, 0.2500])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from clipsift.errors import TrainingError


def interpolate_weights(
    start: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """Return the WiSE-FT state dict for `alpha` in [0, 1] (new tensors, inputs untouched).

    Floating tensors are mixed in float32 and cast back to the fine-tuned dtype; other
    tensors (integer buffers) are taken from the start when alpha is 0, else from the
    fine-tuned weights.

    Raises:
        TrainingError: alpha out of range, or the two state dicts do not match.
    """
    if not 0.0 <= alpha <= 1.0:
        raise TrainingError(f"wise_alpha={alpha!r} is out of range [0, 1]")
    if set(start) != set(finetuned):
        only_start = sorted(set(start) - set(finetuned))[:5]
        only_ft = sorted(set(finetuned) - set(start))[:5]
        raise TrainingError(
            "WiSE-FT needs the same architecture on both sides; keys only in the start: "
            f"{only_start}, only in the fine-tuned weights: {only_ft}"
        )
    out: dict[str, torch.Tensor] = {}
    for key, ft in finetuned.items():
        st = start[key]
        if st.shape != ft.shape:
            raise TrainingError(
                f"WiSE-FT: {key} has shape {tuple(st.shape)} at the start but "
                f"{tuple(ft.shape)} after fine-tuning"
            )
        if alpha == 0.0:
            out[key] = st.detach().clone()
        elif alpha == 1.0 or not ft.is_floating_point():
            out[key] = ft.detach().clone()
        else:
            mixed = torch.lerp(st.detach().float(), ft.detach().float().to(st.device), alpha)
            out[key] = mixed.to(ft.dtype)
    return out


def apply_wise(
    module: torch.nn.Module, start: Mapping[str, torch.Tensor], alpha: float
) -> torch.nn.Module:
    """Replace `module`'s weights in place by the WiSE-FT mix with `start`; returns it."""
    current = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    mixed = interpolate_weights({k: v.cpu() for k, v in start.items()}, current, alpha)
    module.load_state_dict(mixed)
    return module
