"""``surge.lightning.utilities.seed``: where Lightning 1.x code imports ``seed_everything`` from."""
from ...seed import seed_everything

__all__ = ["seed_everything"]
