"""Import Lightning for a benchmark's comparison side, under whichever name it is installed.

``lightning`` ships the trainer as ``lightning.pytorch``; the older ``pytorch_lightning`` package has the
same API under its own name. Either may be present, or both, or neither.
"""
import importlib
import logging
import warnings

NOT_INSTALLED = "Lightning not installed"


def import_lightning():
    """``lightning.pytorch`` or ``pytorch_lightning`` (the first that imports), quietened; None if neither.

    Any exception from the import counts as "not installed" (a Lightning built for another torch may raise
    something other than ImportError): the benchmark then reports its Lightning side as missing, not crash.
    """
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - see the docstring
            continue
        # its start-up lines ("GPU available", "LOCAL_RANK") and its advice about workers are noise here
        for logger in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
            logging.getLogger(logger).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", module="(lightning|pytorch_lightning|lightning_fabric)[.]")
        return module
    return None


def lightning_label(module) -> str:
    return f"{module.__name__} {getattr(module, '__version__', '?')}"
