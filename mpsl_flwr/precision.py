"""The server's compute precision (run-config ``server-precision``): fp32, or bfloat16
autocast with fp32 master weights.

``bf16`` runs the server's forward pass and loss under ``torch.autocast(device_type,
dtype=torch.bfloat16)``: matrix products in bf16, parameters, optimizer state and
gradients of the parameters in fp32 (autocast casts a copy per op, so the optimizer
still steps fp32 weights). The cut-layer inputs stay fp32 leaves, so the gradients sent
back to the clients are fp32, and the output slices sent to the clients are cast to fp32
(``ArrayRecord`` cannot carry bf16). ``auto`` is bf16 on CUDA, fp32 elsewhere (CPU
autocast works but is rarely faster); ``fp32`` leaves the computation untouched.
"""

from __future__ import annotations

import contextlib

import torch

from mpsl_flwr.config import ConfigError, ServerPrecision


def bf16_autocast_supported(device: torch.device) -> bool:
    """Whether ``device`` can run ``torch.autocast(..., dtype=torch.bfloat16)``."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return True
    return bool(torch.amp.is_autocast_available(device.type))


def autocast_dtype(choice: ServerPrecision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the server on ``device`` for ``server-precision=choice``;
    None: plain fp32. ``bf16`` where autocast has no bf16 is a one-line
    :class:`ConfigError` (``auto`` falls back to fp32 there)."""
    wanted = choice == "bf16" or (choice == "auto" and device.type == "cuda")
    if not wanted:
        return None
    if bf16_autocast_supported(device):
        return torch.bfloat16
    if choice == "auto":
        return None
    raise ConfigError(
        f"Run-config key 'server-precision' is 'bf16', but server device {device} has no "
        'bfloat16 autocast. Fix: server-precision="auto" or "fp32".'
    )


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` with ``dtype``, or nothing for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
