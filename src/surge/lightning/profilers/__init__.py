"""``surge.lightning.profilers``: Lightning's profiler names, which are surge's own classes (:mod:`surge.profiler`).

``PassThroughProfiler`` records nothing; passed to the Trainer it is ``profiler=None`` (``trainer.profiler is
None``: surge's Trainer has no profiler object when it does not profile). ``XLAProfiler`` is absent. The
constructors are surge's (docs/lightning.md, "Module tree").
"""
from .advanced import AdvancedProfiler
from .profiler import PassThroughProfiler, Profiler
from .pytorch import PyTorchProfiler
from .simple import SimpleProfiler

__all__ = ["Profiler", "PassThroughProfiler", "SimpleProfiler", "AdvancedProfiler", "PyTorchProfiler"]
