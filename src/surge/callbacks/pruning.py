"""ModelPruning: prune parameters during fit with ``torch.nn.utils.prune``, and make the pruning permanent.

At the end of each training epoch (or of each validation run, ``prune_on_train_epoch_end=False``) the callback
asks ``apply_pruning(epoch)`` whether to prune now and ``amount(epoch)`` how much, then prunes the chosen
parameters: all of them at once ranked together (``use_global_unstructured``) or each on its own. torch's
pruning keeps ``<name>_orig`` (the trained values) and ``<name>_mask`` (0 where pruned) and recomputes
``<name> = orig * mask`` before every forward, so pruned entries stay zero while training goes on; pruning again
removes ``amount`` more of what is left. With the lottery ticket hypothesis the surviving entries go back to
their values from before fit (or fresh ones, ``resample_parameters``). At train end, and in every checkpoint,
the masks are folded into plain parameters (``make_pruning_permanent``).
"""
from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Sequence
from functools import partial
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.utils.prune as torch_prune
from torch import Tensor, nn

from ..module import Module
from ..utils import MisconfigurationError, rank_zero_only
from .base import Callback

_log = logging.getLogger("surge")

_PRUNING_FUNCTIONS = {
    "ln_structured": torch_prune.ln_structured,
    "l1_unstructured": torch_prune.l1_unstructured,
    "random_structured": torch_prune.random_structured,
    "random_unstructured": torch_prune.random_unstructured,
}
_PRUNING_METHODS = {
    "ln_structured": torch_prune.LnStructured,
    "l1_unstructured": torch_prune.L1Unstructured,
    "random_structured": torch_prune.RandomStructured,
    "random_unstructured": torch_prune.RandomUnstructured,
}
# Modules that only hold others: their parameters are found in the modules they hold.
_CONTAINERS = (Module, nn.Sequential, nn.ModuleList, nn.ModuleDict)

ParamList = Sequence[tuple[nn.Module, str]]


def _is_pruning_method(obj: Any) -> bool:
    return inspect.isclass(obj) and issubclass(obj, torch_prune.BasePruningMethod)


class ModelPruning(Callback):
    """Prune the module's parameters during fit, with ``torch.nn.utils.prune``.

    Args:
        pruning_fn: ``"l1_unstructured"``, ``"random_unstructured"``, ``"ln_structured"``, ``"random_structured"``,
            a ``torch.nn.utils.prune.BasePruningMethod`` subclass (with ``use_global_unstructured``), or a function
            called as ``pruning_fn(module, name=..., amount=...)`` (without it).
        parameters_to_prune: ``[(module, "weight"), ...]``; empty: every ``parameter_names`` parameter of every
            layer of the module.
        parameter_names: which parameters the empty ``parameters_to_prune`` takes: ``"weight"``, ``"bias"``.
        use_global_unstructured: rank all the parameters together, so ``amount`` is of their total.
        amount: a fraction (float in [0, 1]) or count (int) of the still unpruned entries to prune, or
            ``amount(epoch)`` returning one; 0 skips the epoch.
        apply_pruning: whether to prune, or ``apply_pruning(epoch) -> bool``.
        make_pruning_permanent: at train end (and in checkpoints) fold the masks into plain parameters.
        use_lottery_ticket_hypothesis: after pruning, reset the surviving entries to their values before fit
            (bool, or a function of the epoch).
        resample_parameters: with the lottery ticket, reset them to fresh values (the layer's ``reset_parameters``).
        pruning_dim: the dimension structured pruning removes slices of.
        pruning_norm: the norm ``ln_structured`` ranks slices by.
        verbose: 1 logs the overall sparsity after each pruning, 2 also per parameter.
        prune_on_train_epoch_end: prune at the end of the training epoch (True) or of validation (False).

    Example::

        ModelPruning("l1_unstructured", amount=0.2)   # 20% more of the remaining weights each epoch
    """

    PARAMETER_NAMES = ("weight", "bias")

    def __init__(self, pruning_fn: Union[Callable, str], parameters_to_prune: ParamList = (),
                 parameter_names: Optional[list[str]] = None, use_global_unstructured: bool = True,
                 amount: Union[int, float, Callable[[int], Union[int, float]]] = 0.5,
                 apply_pruning: Union[bool, Callable[[int], bool]] = True, make_pruning_permanent: bool = True,
                 use_lottery_ticket_hypothesis: Union[bool, Callable[[int], bool]] = True,
                 resample_parameters: bool = False, pruning_dim: Optional[int] = None,
                 pruning_norm: Optional[int] = None, verbose: int = 0, prune_on_train_epoch_end: bool = True) -> None:
        self._use_global_unstructured = use_global_unstructured
        self._parameters_to_prune = parameters_to_prune
        self._use_lottery_ticket_hypothesis = use_lottery_ticket_hypothesis
        self._resample_parameters = resample_parameters
        self._prune_on_train_epoch_end = prune_on_train_epoch_end
        self._parameter_names = parameter_names or self.PARAMETER_NAMES
        self._global_kwargs: dict[str, Any] = {}
        self._original_layers: Optional[dict[int, dict]] = None  # id(layer) -> its copy before fit, what it prunes
        for name in self._parameter_names:
            if name not in self.PARAMETER_NAMES:
                raise MisconfigurationError(f"The provided `parameter_names` name: {name} isn't in {self.PARAMETER_NAMES}")

        if isinstance(pruning_fn, str):
            key = pruning_fn.lower()
            if key not in _PRUNING_FUNCTIONS:
                raise MisconfigurationError(f"The provided `pruning_fn` {pruning_fn} isn't available in PyTorch's "
                                            f"built-in functions: {list(_PRUNING_FUNCTIONS)}")
            kwargs: dict[str, Any] = {}
            if key.endswith("_structured"):
                if pruning_dim is None:
                    raise MisconfigurationError("When requesting `structured` pruning, the `pruning_dim` should be provided.")
                if key == "ln_structured":
                    if pruning_norm is None:
                        raise MisconfigurationError(
                            "When requesting `ln_structured` pruning, the `pruning_norm` should be provided.")
                    kwargs["n"] = pruning_norm
                kwargs["dim"] = pruning_dim
            if use_global_unstructured:
                pruning_fn, self._global_kwargs = _PRUNING_METHODS[key], kwargs
            else:
                pruning_fn = partial(_PRUNING_FUNCTIONS[key], **kwargs)
            self._pruning_method_name = key
        elif _is_pruning_method(pruning_fn):
            if not use_global_unstructured:
                raise MisconfigurationError("PyTorch `BasePruningMethod` is currently only supported with "
                                            "`use_global_unstructured=True`.")
            self._pruning_method_name = pruning_fn.__name__
        elif callable(pruning_fn) and not use_global_unstructured:
            self._pruning_method_name = getattr(pruning_fn, "__name__", type(pruning_fn).__name__)
        else:
            raise MisconfigurationError(
                f"`pruning_fn` is expected to be a str in {list(_PRUNING_FUNCTIONS)} or a PyTorch `BasePruningMethod`"
                f" (or, with use_global_unstructured=False, a function). Found: {pruning_fn}. HINT: if passing a "
                f"`BasePruningMethod`, pass the class, not an instance")
        if use_global_unstructured and pruning_fn.PRUNING_TYPE != "unstructured":
            raise MisconfigurationError(
                'Only the "unstructured" PRUNING_TYPE is supported with `use_global_unstructured=True`. '
                f"Found method {pruning_fn} of type {pruning_fn.PRUNING_TYPE}.")
        self.pruning_fn = pruning_fn
        self._apply_pruning = apply_pruning
        self._make_pruning_permanent = make_pruning_permanent
        if isinstance(amount, bool) or not (isinstance(amount, (int, float)) or callable(amount)):
            raise MisconfigurationError("`amount` should be provided and be either an int, a float or Callable function.")
        self.amount = amount
        if verbose not in (0, 1, 2):
            raise MisconfigurationError("`verbose` must be any of (0, 1, 2)")
        self._verbose = verbose

    # ------------------------------------------------------------------ what to prune
    def filter_parameters_to_prune(self, parameters_to_prune: ParamList = ()) -> ParamList:
        """Override to choose which of the (module, name) pairs are pruned."""
        return parameters_to_prune

    @staticmethod
    def sanitize_parameters_to_prune(pl_module: nn.Module, parameters_to_prune: ParamList = (),
                                     parameter_names: Sequence[str] = ()) -> ParamList:
        """The (module, name) pairs to prune: those given, checked against the module, or every layer's
        ``parameter_names`` parameters when none are given."""
        names = parameter_names or ModelPruning.PARAMETER_NAMES
        layers = [m for m in pl_module.modules() if not isinstance(m, _CONTAINERS)]
        if not parameters_to_prune:
            return [(m, n) for n in names for m in layers if isinstance(getattr(m, n, None), nn.Parameter)]
        if not (isinstance(parameters_to_prune, (list, tuple))
                and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in parameters_to_prune)
                and all(isinstance(m, nn.Module) and isinstance(n, str) for m, n in parameters_to_prune)):
            raise MisconfigurationError("The provided `parameters_to_prune` should either be list of tuple with 2 "
                                        "elements: (nn.Module, parameter_name_to_prune) or None")
        layer_ids = {id(m) for m in layers}
        missing_modules = [m for m, _ in parameters_to_prune if id(m) not in layer_ids]
        missing_parameters = [n for m, n in parameters_to_prune if id(m) in layer_ids and not hasattr(m, n)]
        if missing_modules or missing_parameters:
            raise MisconfigurationError("Some provided `parameters_to_prune` don't exist in the model. Found missing "
                                        f"modules: {missing_modules} and missing parameters: {missing_parameters}")
        return list(parameters_to_prune)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer, module, stage: str) -> None:
        pairs = self.sanitize_parameters_to_prune(module, self._parameters_to_prune, self._parameter_names)
        self._parameters_to_prune = self.filter_parameters_to_prune(pairs)
        if self._use_lottery_ticket_hypothesis:
            # One copy of each layer as it is before fit, and which of its parameters are pruned.
            self._original_layers = {}
            for i, (layer, name) in enumerate(self._parameters_to_prune):
                entry = self._original_layers.setdefault(id(layer), {"data": copy.deepcopy(layer), "names": []})
                entry["names"].append((i, name))

    def on_train_epoch_end(self, trainer, module) -> None:
        if self._prune_on_train_epoch_end:
            self._run_pruning(module.current_epoch)

    def on_validation_epoch_end(self, trainer, module) -> None:
        if not trainer.sanity_checking and not self._prune_on_train_epoch_end and trainer.state.fn == "fit":
            self._run_pruning(module.current_epoch)

    def on_train_end(self, trainer, module) -> None:
        if self._make_pruning_permanent:
            self.make_pruning_permanent(module)

    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        if self._make_pruning_permanent:
            # The file gets plain parameters; the module keeps its masks, so training goes on as it was.
            checkpoint["state_dict"] = self._permanent_state_dict(checkpoint["state_dict"])

    def state_dict(self) -> dict:
        """The masks, by position in ``parameters_to_prune`` (a checkpoint's weights are ``orig * mask``: the
        masks are what a resume needs to keep the pruned entries at zero), and with the lottery ticket the
        layers as they were before fit."""
        masks = {i: getattr(layer, name + "_mask").detach().cpu().clone()
                 for i, (layer, name) in enumerate(self._parameters_to_prune or ())
                 if isinstance(layer, nn.Module) and hasattr(layer, name + "_mask")}
        if not masks:
            return {}
        state: dict = {"masks": masks}
        if self._original_layers:
            state["original_layers"] = {entry["names"][0][0]: entry["data"].state_dict()
                                        for entry in self._original_layers.values()}
        return state

    def on_load_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        """Put the masks of a resumed fit back on its parameters (loaded as ``orig * mask``), so that the pruned
        entries stay zero and the next pruning ranks only the entries still alive, as without the interruption."""
        state = checkpoint.get("callbacks", {}).get(self.state_key) or {}
        if trainer.state.stage != "fit" or "masks" not in state:
            return
        with torch.inference_mode(False):
            for i, mask in state["masks"].items():
                layer, name = self._parameters_to_prune[int(i)]
                if not hasattr(layer, name + "_mask"):
                    torch_prune.custom_from_mask(layer, name, mask.to(getattr(layer, name).device))
        for i, layer_state in state.get("original_layers", {}).items():
            layer, _ = self._parameters_to_prune[int(i)]
            entry = (self._original_layers or {}).get(id(layer))
            if entry is not None:
                entry["data"].load_state_dict(layer_state)

    # ------------------------------------------------------------------ pruning
    def _run_pruning(self, epoch: int) -> None:
        prune = self._apply_pruning(epoch) if callable(self._apply_pruning) else self._apply_pruning
        amount = self.amount(epoch) if callable(self.amount) else self.amount
        if not prune or not amount:
            return
        # At validation end surge runs under inference mode: masks made there could not train afterwards.
        with torch.inference_mode(False):
            self.apply_pruning(amount)
            lottery = self._use_lottery_ticket_hypothesis
            if lottery(epoch) if callable(lottery) else lottery:
                self.apply_lottery_ticket_hypothesis()

    def apply_pruning(self, amount: Union[int, float]) -> None:
        """Prune ``amount`` of the chosen parameters now."""
        before = [self._get_pruned_stats(m, n) for m, n in self._parameters_to_prune] if self._verbose else None
        if self._use_global_unstructured:
            # Only the keywords the method's constructor takes (LnStructured's n and dim are not for global use).
            kwargs = {**self._global_kwargs, "amount": amount}
            accepted = set(inspect.signature(self.pruning_fn).parameters) - {"self"}
            torch_prune.global_unstructured(self._parameters_to_prune, pruning_method=self.pruning_fn,
                                            **{k: v for k, v in kwargs.items() if k in accepted})
        else:
            for layer, name in self._parameters_to_prune:
                self.pruning_fn(layer, name=name, amount=amount)
        if self._verbose:
            after = [self._get_pruned_stats(m, n) for m, n in self._parameters_to_prune]
            self._log_sparsity_stats(before, after, amount=amount)

    def apply_lottery_ticket_hypothesis(self) -> None:
        """Reset the unpruned entries to their values before fit (the lottery ticket hypothesis, step 4:
        the mask found by training, the initial weights), or to freshly sampled ones with ``resample_parameters``."""
        for entry in self._original_layers.values():
            source = entry["data"]
            if self._resample_parameters and callable(getattr(source, "reset_parameters", None)):
                source = copy.deepcopy(source)  # the copy before fit stays as it was
                source.reset_parameters()
            for i, name in entry["names"]:
                layer, _ = self._parameters_to_prune[i]
                dst = getattr(layer, name + "_orig", None)
                if dst is None:
                    dst = getattr(layer, name)
                src = getattr(source, name)
                if isinstance(dst, Tensor) and isinstance(src, Tensor):
                    # In place: the same Parameter (the optimizer keeps it), and its own storage (the copy
                    # before fit must not train along with it, or the next reset would not go back to it).
                    dst.data.copy_(src.data)

    def make_pruning_permanent(self, module: nn.Module) -> None:
        """Fold every mask into its parameter and remove the pruning hooks (``torch.nn.utils.prune.remove``)."""
        for layer in module.modules():
            for key, hook in list(layer._forward_pre_hooks.items()):
                if isinstance(hook, torch_prune.BasePruningMethod):
                    hook.remove(layer)
                    del layer._forward_pre_hooks[key]

    @staticmethod
    def _permanent_state_dict(state_dict: dict) -> dict:
        """``state_dict`` with each ``<name>_orig`` / ``<name>_mask`` pair replaced by ``<name> = orig * mask``,
        on the CPU."""
        out = dict(state_dict)
        for key in [k[: -len("_mask")] for k in state_dict if k.endswith("_mask")]:
            if key + "_orig" not in out:
                continue
            orig, mask = out.pop(key + "_orig"), out.pop(key + "_mask")
            out[key] = mask.to(orig.dtype) * orig
        return {k: v.cpu() if isinstance(v, Tensor) else v for k, v in out.items()}

    @staticmethod
    def _get_pruned_stats(module: nn.Module, name: str) -> tuple[int, int]:
        mask = getattr(module, name + "_mask", None)
        if mask is None:
            return 0, 1
        return int((mask == 0).sum()), mask.numel()

    @rank_zero_only
    def _log_sparsity_stats(self, prev: list, curr: list, amount: Union[int, float] = 0) -> None:
        total = sum(n for _, n in curr)
        was, now = sum(z for z, _ in prev), sum(z for z, _ in curr)
        _log.info(f"Applied `{self._pruning_method_name}`. Pruned: {was}/{total} ({was / total:.2%}) -> "
                  f"{now}/{total} ({now / total:.2%})")
        if self._verbose == 2:
            for (layer, name), (pz, pn), (cz, cn) in zip(self._parameters_to_prune, prev, curr):
                _log.info(f"Applied `{self._pruning_method_name}` to `{layer!r}.{name}` with amount={amount}. "
                          f"Pruned: {pz} ({pz / pn:.2%}) -> {cz} ({cz / cn:.2%})")
