"""``torchvision.utils`` offline stand-in (see the package docstring): a grid of images and saving it."""
from __future__ import annotations

import math
from typing import Optional

import torch
from PIL import Image

__all__ = ["make_grid", "save_image"]


def _rescale(img: torch.Tensor, value_range: Optional[tuple]) -> torch.Tensor:
    low, high = (float(value_range[0]), float(value_range[1])) if value_range else (float(img.min()), float(img.max()))
    return img.clamp(low, high).sub(low).div(max(high - low, 1e-5))


def make_grid(tensor, nrow: int = 8, padding: int = 2, normalize: bool = False,
              value_range: Optional[tuple] = None, scale_each: bool = False, pad_value: float = 0.0) -> torch.Tensor:
    """Images N x C x H x W (or a list of C x H x W, or one H x W / C x H x W image) tiled ``nrow`` to a
    row with ``padding`` pixels of ``pad_value`` around each: a 3 x H' x W' tensor (1-channel input is
    repeated to 3 channels, as torchvision does). ``normalize`` maps each image (``scale_each``) or the
    whole batch from ``value_range`` (default: its min and max) to [0, 1]."""
    if isinstance(tensor, (list, tuple)):
        tensor = torch.stack(list(tensor))
    tensor = tensor.detach()
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.size(1) == 1:
        tensor = tensor.repeat(1, 3, 1, 1)
    tensor = tensor.float().clone()
    if normalize:
        if scale_each:
            tensor = torch.stack([_rescale(t, value_range) for t in tensor])
        else:
            tensor = _rescale(tensor, value_range)
    n, c, h, w = tensor.shape
    cols = min(nrow, n)
    rows = int(math.ceil(n / cols))
    cell_h, cell_w = h + padding, w + padding
    grid = tensor.new_full((c, rows * cell_h + padding, cols * cell_w + padding), float(pad_value))
    for k in range(n):
        r, col = divmod(k, cols)
        top, left = r * cell_h + padding, col * cell_w + padding
        grid[:, top:top + h, left:left + w] = tensor[k]
    return grid


def save_image(tensor, fp, format: Optional[str] = None, **grid_kwargs) -> None:
    """``make_grid(tensor, **grid_kwargs)`` written as an 8-bit RGB image file (PNG from the name)."""
    grid = make_grid(tensor, **grid_kwargs)
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).cpu().numpy()
    Image.fromarray(pixels).save(fp, format=format)
