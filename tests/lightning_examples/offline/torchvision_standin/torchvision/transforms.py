"""``torchvision.transforms`` offline stand-in (see the package docstring): the four transforms the
Lightning examples use, with torchvision's conventions (images as C x H x W floats in [0, 1])."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

__all__ = ["Compose", "ToTensor", "Normalize", "Lambda"]


class Compose:
    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img


class ToTensor:
    """PIL image or H x W (x C) array -> float tensor C x H x W; 8-bit values are divided by 255."""

    def __call__(self, pic) -> torch.Tensor:
        arr = np.array(pic, copy=True)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        tensor = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        if tensor.dtype == torch.uint8:
            return tensor.float().div(255.0)
        return tensor.float()


class Normalize:
    """(x - mean) / std per channel, on a C x H x W (or N x C x H x W) tensor."""

    def __init__(self, mean, std, inplace: bool = False) -> None:
        self.mean, self.std, self.inplace = mean, std, inplace

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        out = tensor if self.inplace else tensor.clone()
        return out.sub_(mean).div_(std)


class Lambda:
    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, img):
        return self.fn(img)
