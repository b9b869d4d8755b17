"""``surge.lightning.strategies.single_device``: ``SingleDeviceStrategy`` is :class:`surge.strategies.single.SingleDevice`."""
from ...strategies.single import SingleDevice as SingleDeviceStrategy

__all__ = ["SingleDeviceStrategy"]
