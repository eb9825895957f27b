"""Checking a torch device name before any work (shared by segmentation, diagnosis and the demo)."""

from __future__ import annotations

from covidct.errors import ConfigError


def check_device(device: str, *, what: str = "covidct") -> str:
    """``device`` if torch can use it here (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...), else ConfigError.

    ``what`` names the part that runs on it in the message for a device type other than cpu or cuda.
    """
    if device == "cpu":  # always there; no need to import torch to say so
        return device
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a torch device: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise ConfigError(f"--device {device!r}: {what} runs on cpu or cuda only")
    return device
