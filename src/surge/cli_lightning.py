"""``LightningCLI``: :class:`surge.cli.SurgeCLI` taking the constructor arguments of Lightning's class.

What it adds to SurgeCLI, as Lightning's CLI does it:

- the arguments in Lightning's order (``LightningCLI(Model, Data, SaveConfigCallback, {...})`` works);
- ``save_config_callback``: the class that writes ``config.yaml`` (surge's :class:`~surge.cli.SaveConfigCallback`
  or a subclass), or None to write none; ``save_config_kwargs``: ``config_filename`` and ``overwrite``
  (False: a run whose folder already holds the file stops before writing over it, as in Lightning);
- ``trainer_defaults["callbacks"]`` (one callback or a list): always added to the Trainer, and kept out of the
  parsed (and saved) config, since callback instances cannot be written to YAML.

What it does not do (each is refused with an error rather than ignored): ``parser_kwargs``, a
``parser_class``, and ``save_config_kwargs`` other than the two above. ``auto_configure_optimizers`` and
``load_from_checkpoint_support`` are accepted and change nothing: surge adds no ``--optimizer`` /
``--lr_scheduler`` keys (they are unknown keys, an error), and ``save_hyperparameters`` records what
``__init__`` received. Lightning's hooks ``before_instantiate_classes`` / ``before_fit`` ... are not called
(SurgeCLI's extension point is ``add_arguments_to_parser``). docs/lightning.md lists these.

Example (Lightning's own ``examples/pytorch/basics/autoencoder.py``)::

    cli = LightningCLI(LitAutoEncoder, MyDataModule, seed_everything_default=1234, run=False,
                       trainer_defaults={"callbacks": ImageSampler(), "max_epochs": 10},
                       save_config_kwargs={"overwrite": True})
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
"""
from __future__ import annotations

import os
from typing import Any, Optional

from .callbacks.base import Callback
from .cli import CONFIG_FILENAME, SaveConfigCallback, SurgeCLI
from .utils import MisconfigurationError, SurgeError

__all__ = ["LightningCLI"]

_SAVE_CONFIG_KWARGS = ("config_filename", "overwrite")


class LightningCLI(SurgeCLI):
    """:class:`~surge.cli.SurgeCLI` with Lightning's constructor (module docstring: what differs).

    Arguments (Lightning's; those SurgeCLI shares mean the same there):
        model_class / datamodule_class: the classes to build from ``--model.*`` / ``--data.*``
            (None: any subclass, named by ``class_path``).
        save_config_callback: the class writing the run's config (None: write none).
        save_config_kwargs: ``{"config_filename": "config.yaml", "overwrite": False}``.
        trainer_class: the Trainer class. trainer_defaults: Trainer argument defaults; its ``callbacks``
            are always added.
        seed_everything_default: True (a random seed, saved in the config), False (no seeding) or an int.
        parser_kwargs / parser_class: not supported (an error unless left at their defaults).
        subclass_mode_model / subclass_mode_data, args, run: as in SurgeCLI.
        auto_configure_optimizers / load_from_checkpoint_support: accepted, no effect.
    """

    def __init__(
        self,
        model_class: Optional[type] = None,
        datamodule_class: Optional[type] = None,
        save_config_callback: Optional[type] = SaveConfigCallback,
        save_config_kwargs: Optional[dict[str, Any]] = None,
        trainer_class: Optional[type] = None,
        trainer_defaults: Optional[dict[str, Any]] = None,
        seed_everything_default: Any = True,
        parser_kwargs: Optional[dict[str, Any]] = None,
        parser_class: Optional[type] = None,
        subclass_mode_model: bool = False,
        subclass_mode_data: bool = False,
        args: Any = None,
        run: bool = True,
        auto_configure_optimizers: bool = True,
        load_from_checkpoint_support: bool = True,
    ) -> None:
        if parser_kwargs:
            raise MisconfigurationError(
                f"LightningCLI(parser_kwargs={parser_kwargs!r}): surge's CLI takes no parser arguments; set "
                f"defaults with trainer_defaults or a --config file, or override add_arguments_to_parser")
        if parser_class is not None:
            raise MisconfigurationError(
                f"LightningCLI(parser_class={parser_class!r}): surge's CLI builds its own parser; customise it "
                f"in add_arguments_to_parser(parser)")
        if save_config_callback is not None and not (isinstance(save_config_callback, type)
                                                      and issubclass(save_config_callback, SaveConfigCallback)):
            raise MisconfigurationError(
                f"LightningCLI(save_config_callback={save_config_callback!r}) must be None or "
                f"surge.cli.SaveConfigCallback (or a subclass of it)")
        save_kwargs = dict(save_config_kwargs or {})
        unknown = sorted(set(save_kwargs) - set(_SAVE_CONFIG_KWARGS))
        if unknown:
            raise MisconfigurationError(f"LightningCLI(save_config_kwargs=...): {', '.join(unknown)} not supported; "
                                        f"surge accepts {', '.join(_SAVE_CONFIG_KWARGS)}")
        defaults = dict(trainer_defaults or {})
        persistent = defaults.pop("callbacks", None)
        self.persistent_callbacks: list[Callback] = (
            [] if persistent is None else list(persistent) if isinstance(persistent, (list, tuple)) else [persistent])
        self.save_config_callback = save_config_callback
        self.save_config_kwargs = save_kwargs
        self.auto_configure_optimizers = auto_configure_optimizers
        self.load_from_checkpoint_support = load_from_checkpoint_support
        super().__init__(model_class, datamodule_class, subclass_mode_model=subclass_mode_model,
                         subclass_mode_data=subclass_mode_data, args=args, run=run,
                         save_config=save_config_callback is not None, seed_everything_default=seed_everything_default,
                         trainer_defaults=defaults, trainer_class=trainer_class)

    def _instantiate(self, parser, config):
        text = parser.dump(config, skip_unset=False)  # nulls too: a null that overrides a default must survive
        init = parser.instantiate(config)
        kwargs = dict(init["trainer"])
        given = kwargs.get("callbacks")
        callbacks = [] if given is None else list(given) if isinstance(given, (list, tuple)) else [given]
        callbacks += self.persistent_callbacks
        if self.save_config_callback is not None:
            filename = self.save_config_kwargs.get("config_filename", CONFIG_FILENAME)
            if not self.save_config_kwargs.get("overwrite", False):
                callbacks.append(_RefuseOverwrite(filename))
            callbacks.append(self.save_config_callback(text, filename=filename))
        kwargs["callbacks"] = callbacks
        if kwargs.get("logger") is None:
            kwargs["logger"] = True
        try:
            trainer = self.trainer_class(**kwargs)
        except SurgeError as err:  # a bad value the types allowed (e.g. accelerator='gpu' on a CPU machine)
            self._error(f"trainer: {err}")
        return trainer, init["model"], init.get("data")


class _RefuseOverwrite(Callback):
    """Stops a run, before the config callback writes, when its folder already holds ``filename``
    (``save_config_kwargs={"overwrite": False}``, Lightning's default): a re-run into the same folder
    must not replace the config of the run whose results are there."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self._checked = False

    def setup(self, trainer, module, stage: str) -> None:
        if self._checked or trainer.fast_dev_run:
            return
        self._checked = True  # fit then test in one CLI: the second stage finds this run's own file
        path = os.path.join(trainer.log_dir, self.filename)
        exists = trainer.strategy.broadcast(os.path.isfile(path) if trainer.is_global_zero else False)
        if exists:
            raise RuntimeError(
                f"{path} exists already: a run's config would replace it. Delete it, pass "
                f"LightningCLI(save_config_kwargs={{'overwrite': True}}), or save_config_callback=None")
