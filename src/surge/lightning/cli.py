"""``surge.lightning.cli``: ``LightningCLI`` is :class:`surge.cli_lightning.LightningCLI` (surge's
:class:`~surge.cli.SurgeCLI` taking Lightning's constructor arguments); ``SaveConfigCallback`` is
:class:`surge.cli.SaveConfigCallback`. Needs jsonargparse, as Lightning's CLI does."""
from ..cli import SaveConfigCallback
from ..cli_lightning import LightningCLI

__all__ = ["LightningCLI", "SaveConfigCallback"]
