"""Zero-edit mode: run an unmodified PyTorch Lightning script on surge.

    surge run train.py --trainer.max_epochs 3          # or: python -m surge.lightning train.py ...
    surge run -m my_pkg.train --lr 0.1                 # a module, as with python -m

For that process and every Python process it starts (surge's DDP ranks, DataLoader workers, ``spawn``
workers), ``lightning.pytorch``, ``pytorch_lightning`` and their submodules *are* ``surge.lightning``'s
modules (the same objects, not copies: ``lightning.pytorch.Trainer is surge.lightning.Trainer``), and
``import lightning as L`` gives a small package whose ``L.Trainer``, ``L.LightningModule``,
``L.LightningDataModule``, ``L.Callback``, ``L.seed_everything`` and ``L.pytorch`` are surge.lightning's.
A Lightning module path that surge.lightning lacks fails to import with a message that says so;
``lightning.fabric`` is not part of surge.

Nothing here happens on ``import surge`` or ``import surge.lightning``: a real Lightning install is
shadowed only under ``surge run`` / ``python -m surge.lightning``, or after :func:`install`.

How the processes a run starts get the same names: the entry point sets ``SURGE_ZERO_EDIT=1`` and puts
a folder holding a small ``sitecustomize.py`` first on ``PYTHONPATH``. Python imports that file at the
start of every child process; it waits for the first ``lightning``/``pytorch_lightning`` import and
then calls :func:`install` (so a child that never imports Lightning never loads surge). That covers
surge's DDP launcher (which runs ``python train.py ...`` again for ranks 1..N-1), DataLoader workers
started with ``spawn`` or ``forkserver`` (which import the script again by its path), and anything else
the script starts with Python. Forked workers inherit the installed finder.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import runpy
import sys
from typing import Optional, Sequence

__all__ = ["install", "uninstall", "installed", "main"]

ENV_VAR = "SURGE_ZERO_EDIT"
# The folder with the start-up hook that child processes import (see the module docstring).
BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_zero_edit_boot")

_TARGET = "surge.lightning"
# Lightning's names for surge.lightning, longest first: "lightning.pytorch.X.Y" -> "surge.lightning.X.Y".
_ROOTS = ("lightning.pytorch", "pytorch_lightning")
# What Lightning's own top-level package (lightning/__init__.py) offers from lightning.pytorch.
_LIGHTNING_NAMES = ("Trainer", "LightningModule", "LightningDataModule", "Callback", "seed_everything")
_FABRIC = ("surge does not provide Lightning Fabric: zero-edit mode runs lightning.pytorch code "
           "(Trainer, LightningModule, ...) only")


def _missing(fullname: str) -> ModuleNotFoundError:
    if fullname == "lightning.fabric" or fullname.startswith("lightning.fabric."):
        why = _FABRIC
    else:
        surge_name = _surge_name(fullname)
        where = f" (it would be {surge_name})" if surge_name else ""
        why = (f"surge.lightning does not provide it{where}; docs/lightning.md lists the Lightning "
               f"paths that exist")
    return ModuleNotFoundError(f"No module named {fullname!r}: {why}", name=fullname)


def _surge_name(fullname: str) -> Optional[str]:
    """``surge.lightning...`` for a ``lightning.pytorch...`` / ``pytorch_lightning...`` name, else None."""
    for root in _ROOTS:
        if fullname == root or fullname.startswith(root + "."):
            return _TARGET + fullname[len(root):]
    return None


class _AliasLoader(importlib.abc.Loader):
    """Gives the import system surge's module itself for a Lightning name (so sys.modules holds one
    object under both names, and ``mock.patch("lightning.pytorch.x.y")`` patches surge's object)."""

    def __init__(self, surge_name: str) -> None:
        self.surge_name = surge_name
        self._own_spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.surge_name)
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # The import system has just set module.__spec__ to the Lightning-named spec; give surge's module
        # its own back, so it reads the same (name, file) whichever name imported it first.
        module.__spec__ = self._own_spec


class _LightningLoader(importlib.abc.Loader):
    """``import lightning``: a package holding lightning.pytorch (surge.lightning) and its main names."""

    def exec_module(self, module) -> None:
        pytorch = importlib.import_module("lightning.pytorch")
        module.__doc__ = "surge's stand-in for Lightning's top-level package (surge.lightning.zero_edit)."
        module.pytorch = pytorch
        for name in _LIGHTNING_NAMES:
            setattr(module, name, getattr(pytorch, name))
        module.__all__ = list(_LIGHTNING_NAMES)
        module.__getattr__ = _lightning_getattr  # PEP 562: names read on demand


def _lightning_getattr(name: str):
    if name == "__version__":
        return getattr(sys.modules[_TARGET], name)
    if name in ("Fabric", "fabric"):
        raise AttributeError(f"lightning.{name}: {_FABRIC}")
    raise AttributeError(f"module 'lightning' (surge's zero-edit stand-in) has no attribute {name!r}")


class _Finder(importlib.abc.MetaPathFinder):
    """First in ``sys.meta_path`` while zero-edit mode is on: Lightning's names resolve to surge's."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "lightning":
            return importlib.machinery.ModuleSpec(fullname, _LightningLoader(), origin=__name__, is_package=True)
        surge_name = _surge_name(fullname)
        if surge_name is None:
            if fullname.startswith("lightning."):  # lightning.fabric, lightning.app, ...
                raise _missing(fullname)
            return None
        found = importlib.util.find_spec(surge_name)
        if found is None:
            raise _missing(fullname)
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(surge_name), origin=found.origin,
                                              is_package=found.submodule_search_locations is not None)


_FINDER = _Finder()


def _lightning_names() -> list:
    return [n for n in sys.modules if n.partition(".")[0] in ("lightning", "pytorch_lightning")]


def _ours(module) -> bool:
    spec = getattr(module, "__spec__", None)
    return (getattr(module, "__name__", "").startswith(_TARGET)
            or isinstance(getattr(spec, "loader", None), _LightningLoader))


def installed() -> bool:
    """Whether zero-edit mode is on in this process."""
    return _FINDER in sys.meta_path


def install(subprocesses: bool = False) -> None:
    """Turn zero-edit mode on in this process: from now on ``lightning.pytorch``, ``pytorch_lightning``
    and ``lightning`` import as surge.lightning (see the module docstring). Call it before the first
    Lightning import; it raises ``RuntimeError`` if a real Lightning is already imported.

    ``subprocesses=True`` also turns it on in every Python process started from now on (it sets
    ``SURGE_ZERO_EDIT=1`` and puts the start-up hook first on ``PYTHONPATH`` in ``os.environ``), as
    ``surge run`` does. Without it, a process that runs the script again (surge's DDP ranks, ``spawn``
    DataLoader workers) is covered only because the script calls ``install()`` again at its top.

    Example::

        from surge.lightning import zero_edit
        zero_edit.install()
        import lightning.pytorch as pl          # surge.lightning
    """
    if subprocesses:
        os.environ[ENV_VAR] = "1"
        entries = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if BOOT_DIR not in entries:
            os.environ["PYTHONPATH"] = os.pathsep.join([BOOT_DIR, *entries])
    if installed():
        return
    real = [n for n in _lightning_names() if not _ours(sys.modules[n])]
    if real:
        raise RuntimeError(f"zero-edit mode must start before Lightning is imported, and {', '.join(sorted(real))} "
                           f"is already imported (the real Lightning): call surge.lightning.zero_edit.install() "
                           f"first, or run the script with `surge run`")
    # The start-up hook's finder (a child process) hands over to this one.
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "surge_zero_edit_boot", False)]
    sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    """Turn zero-edit mode off in this process: Lightning's names are forgotten (``sys.modules``) and
    import as they would without surge. Modules that already imported them keep what they got."""
    while _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    for name in _lightning_names():
        if _ours(sys.modules[name]):
            del sys.modules[name]


# ----------------------------------------------------------------------------------- the entry point
_USAGE = """usage: {prog} SCRIPT [ARGS ...]
       {prog} -m MODULE [ARGS ...]

Run an unmodified PyTorch Lightning script on surge: in this process and every Python process it starts
(DDP ranks, DataLoader workers), `lightning.pytorch`, `pytorch_lightning` and `import lightning` resolve to
surge.lightning. SCRIPT runs as `python SCRIPT ARGS` would run it (as __main__, with sys.argv = [SCRIPT,
*ARGS]); everything after SCRIPT is the script's own. See docs/lightning.md, "Zero-edit mode"."""


def main(argv: Optional[Sequence[str]] = None, prog: str = "surge run") -> int:
    """``surge run`` / ``python -m surge.lightning``: run a Lightning script or module in zero-edit mode
    and return its exit status (an exception in it prints its traceback and gives 1, as with python)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(_USAGE.format(prog=prog), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(_USAGE.format(prog=prog))
        return 0
    as_module = argv[0] == "-m"
    if as_module:
        if len(argv) < 2:
            print(f"{prog}: error: -m needs a module name\n\n" + _USAGE.format(prog=prog), file=sys.stderr)
            return 2
        target, args = argv[1], argv[2:]
    else:
        target, args = argv[0], argv[1:]
        if target.startswith("-"):
            print(f"{prog}: error: unknown option {target!r}; the script comes first and every argument after "
                  f"it is the script's: {prog} SCRIPT [ARGS ...]", file=sys.stderr)
            return 2
        if not os.path.isfile(target):
            print(f"{prog}: can't open file {os.path.abspath(target)!r}: no such file", file=sys.stderr)
            return 2
    install(subprocesses=True)
    try:
        if as_module:
            # As `python -m`: the current folder first on the path; run_module sets sys.argv[0] to its file.
            _set_path0(os.getcwd())
            sys.argv = [target, *args]
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            # As `python SCRIPT`: the script's folder first on the path (not this entry point's), __file__ absolute.
            _set_path0(os.path.dirname(os.path.realpath(target)))
            sys.argv = [target, *args]
            runpy.run_path(os.path.abspath(target), run_name="__main__")
    except Exception as err:  # SystemExit and KeyboardInterrupt go on up, with their own exit status
        tb = _user_frames(err.__traceback__)
        sys.excepthook(type(err), err.with_traceback(tb), tb)
        return 1
    return 0


def _set_path0(folder: str) -> None:
    if sys.path:
        sys.path[0] = folder
    else:
        sys.path.append(folder)


def _user_frames(tb):
    """The traceback from the first frame that is not this entry point or runpy (the script's own)."""
    ours = {os.path.realpath(__file__), os.path.realpath(runpy.__file__), "<frozen runpy>"}
    while tb is not None and (tb.tb_frame.f_code.co_filename in ours
                              or os.path.realpath(tb.tb_frame.f_code.co_filename) in ours):
        tb = tb.tb_next
    return tb
