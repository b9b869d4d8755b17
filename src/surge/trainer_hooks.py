"""How the Trainer calls hooks: on the callbacks that define one, then on the module (``_call``), and the
``setup`` / ``teardown`` calls around a stage; mixed into :class:`surge.Trainer`."""
from __future__ import annotations

from typing import Any

from .callbacks.base import Callback
from .datamodule import _overrides
from .module import Module
from .profiler import NO_PROFILE
from .results import Results


class HookCalls:
    """Hook dispatch. Who overrides a hook is looked up once per run; a hook nobody listens to costs a dict lookup."""

    def _call_setup(self, stage: str) -> None:
        stage_name = "validate" if stage == "sanity_check" else stage
        for cb in self.callbacks:
            cb.setup(self, self.module, stage_name)
        if self.datamodule is not None:
            self.datamodule.setup(stage_name)
        self._results = Results("setup", self.strategy)
        self._results.hook = "setup"
        self.module.setup(stage_name)

    def _call_teardown(self, stage: str) -> None:
        if self.datamodule is not None:
            self.datamodule.teardown(stage)
        for cb in self.callbacks:
            cb.teardown(self, self.module, stage)
        self.module.teardown(stage)


    def _call(self, name: str, *args) -> Any:
        """Call hook ``name`` on every callback that defines it, then on the module."""
        self._results.hook = name
        fns, own = self._hooks.get(name) or self._listeners(name)
        if not fns and own is None and self.profiler is None:
            return None  # most hooks, most steps: nobody is listening
        with NO_PROFILE if self.profiler is None else self.profiler.profile(name):
            for fn in fns:
                try:
                    fn(self, self.module, *args)
                except Exception as err:
                    if hasattr(err, "add_note"):  # Python 3.11+: name the callback under the original traceback
                        err.add_note(f"(raised by callback {type(fn.__self__).__name__}.{name})")
                    raise
            return own(*args) if own is not None else None

    def _listeners(self, name: str) -> tuple[list, Any]:
        """The callbacks' bound ``name`` hooks and the module's (``None`` when it keeps the placeholder).
        Who overrides a hook is fixed for the run: looked up once."""
        entry = self._hooks.get(name)
        if entry is None:
            base = getattr(Callback, name)
            fns = [getattr(cb, name) for cb in self.callbacks if getattr(type(cb), name, base) is not base]
            own = getattr(self.module, name, None)
            if own is not None and getattr(Module, name, None) is not None and not _overrides(self.module, name, Module):
                own = None  # the Module's own placeholder does nothing
            entry = self._hooks[name] = (fns, own)
        return entry

    def _listened(self, name: str) -> bool:
        fns, own = self._listeners(name)
        return bool(fns) or own is not None or self.profiler is not None
