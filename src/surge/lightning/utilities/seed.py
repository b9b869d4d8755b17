"""``surge.lightning.utilities.seed``: ``isolate_rng`` (:func:`surge.seed.isolate_rng`), and ``seed_everything``,
which Lightning 1.x code imports from here."""
from ...seed import isolate_rng, seed_everything

__all__ = ["isolate_rng", "seed_everything"]
