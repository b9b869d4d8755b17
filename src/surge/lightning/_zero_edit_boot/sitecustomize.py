"""Start-up hook of surge's zero-edit mode (surge.lightning.zero_edit), for the processes a run starts.

``surge run`` puts this folder first on ``PYTHONPATH`` and sets ``SURGE_ZERO_EDIT=1``, so Python imports
this file at the start of every process the run starts (DDP ranks, ``spawn`` DataLoader workers). It
loads nothing itself: it adds a finder that waits for the first ``lightning`` / ``pytorch_lightning``
import and then turns zero-edit mode on. Then it runs the ``sitecustomize`` it hides, if there is one.
"""
import os
import sys


class _Boot:
    """Until Lightning is first imported: then zero_edit.install() replaces this finder with its own."""

    surge_zero_edit_boot = True  # how install() recognizes it
    _busy = False

    def find_spec(self, fullname, path=None, target=None):
        # (_busy: a library that probes for Lightning while surge itself is being imported finds nothing)
        if self._busy or fullname.partition(".")[0] not in ("lightning", "pytorch_lightning"):
            return None
        self._busy = True
        try:
            from surge.lightning import zero_edit
        except ImportError:  # a Python without surge: nothing to map to
            sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
            return None
        finally:
            self._busy = False
        zero_edit.install()
        return zero_edit._FINDER.find_spec(fullname, path, target)


def _run_hidden_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    import importlib.machinery
    import importlib.util

    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)


if __name__ == "sitecustomize":  # imported by site at start-up (not as surge.lightning._zero_edit_boot...)
    if os.environ.get("SURGE_ZERO_EDIT") == "1":
        sys.meta_path.insert(0, _Boot())
    _run_hidden_sitecustomize()
