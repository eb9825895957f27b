"""The slice classifier networks: MONAI 2-D ResNets configured as the standard (torchvision-shaped) ResNet.

MONAI's ``resnet*`` factories default to a first-layer stride of 1, which quadruples the compute of every
later layer (32.7 vs 8.2 GFLOP for a 224x224 slice with ResNet-50). :func:`build_classifier` always passes
``conv1_t_size=7, conv1_t_stride=2``: the network the paper used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from torch import nn

from covidct.errors import ConfigError
from covidct.registry import NUM_CLASSES

if TYPE_CHECKING:
    import torch

#: Supported architectures -> (block, layers) as in He et al. 2016.
ARCHITECTURES: Final[dict[str, tuple[str, tuple[int, int, int, int]]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}

#: First-layer settings of the standard ResNet (recorded in every model card).
CONV1_SIZE: Final[int] = 7
CONV1_STRIDE: Final[int] = 2


def build_classifier(
    arch: str = "resnet50", *, num_classes: int = NUM_CLASSES, in_channels: int = 1
) -> nn.Module:
    """A freshly initialised 2-D ResNet (``resnet18``, ``resnet34`` or ``resnet50``) with batch norm.

    Input ``(n, in_channels, S, S)`` float32 (any S >= 32); output logits ``(n, num_classes)``.
    """
    from monai.networks.nets import ResNet

    key = arch.strip().lower()
    if key not in ARCHITECTURES:
        raise ConfigError(f"unknown classifier architecture {arch!r}: use one of {', '.join(ARCHITECTURES)}")
    if num_classes < 2 or in_channels < 1:
        raise ConfigError(f"need num_classes >= 2 and in_channels >= 1, got {num_classes}, {in_channels}")
    block, layers = ARCHITECTURES[key]
    return ResNet(
        block=block,
        layers=list(layers),
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_size=CONV1_SIZE,
        conv1_t_stride=CONV1_STRIDE,
        num_classes=num_classes,
        norm="batch",
    )


def penultimate_features(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The network's penultimate-layer features of ``x``: ``(n, d)``, global-average-pooled, before ``fc``.

    ``network`` is a classifier from :func:`build_classifier` (any module whose final layer is ``network.fc``,
    a Linear fed the pooled features); it is run as it is (call ``.eval()`` first for inference-mode batch
    norm). ``d`` is 512 for ResNet-18/34 and 2048 for ResNet-50.
    """
    fc = getattr(network, "fc", None)
    if not isinstance(fc, nn.Module):
        raise ConfigError(f"{type(network).__name__} has no final 'fc' layer: cannot take its features")
    seen: list[torch.Tensor] = []

    def grab(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0])

    handle = fc.register_forward_pre_hook(grab)
    try:
        network(x)
    finally:
        handle.remove()
    return seen[0].reshape(seen[0].shape[0], -1)
