"""One process, one device: the whole Strategy interface at its simplest."""
from __future__ import annotations

from .strategy import Strategy, register


@register("auto", "single_device")
class SingleDevice(Strategy):
    """Train on one device (CPU, one GPU or MPS) in this process. ``Trainer(strategy="single_device")``."""

    name = "single_device"

    def configure(self, accelerator, device_ids, num_nodes, precision) -> None:
        from ..utils import MisconfigurationError

        if len(device_ids) != 1 or num_nodes != 1:
            raise MisconfigurationError(
                f"strategy={self.name!r} runs on one device, but devices={device_ids} and num_nodes={num_nodes} "
                f"were given; use devices=1 (distributed strategies come with strategy='ddp')"
            )
        super().configure(accelerator, device_ids, num_nodes, precision)
