"""The ``surge`` command, and :class:`SurgeCLI` for your own ``main.py``.

usage: surge COMMAND [options]

    surge fit --config run.yaml --trainer.max_epochs 2 --model.lr 0.01
    surge fit --model surge.demos.digits.DigitsClassifier --data surge.demos.digits.DigitsDataModule
    surge fit --config run.yaml --print_config          # the full resolved config, as YAML
    surge test --config runs/surge_logs/version_0/config.yaml --ckpt_path best
    surge demo --max-epochs 3                           # train the digits demo (see surge demo --help)

Every fit/validate/test/predict run saves its resolved config as ``config.yaml`` in its log folder
(``trainer.log_dir``), so ``surge fit --config <that file>`` runs it again. See docs/cli.md.
"""
from __future__ import annotations

import os
import random
import re
import sys
from typing import Any, Optional, Union

from .callbacks.base import Callback

STAGES = ("fit", "validate", "test", "predict")
_COMMANDS = {
    "fit": "train a model (and validate it while training)",
    "validate": "run one validation epoch",
    "test": "run one test epoch",
    "predict": "run predict_step over the predict data",
    "demo": "train a CNN on scikit-learn's handwritten digits and report test accuracy",
    "consolidate": "write a sharded (FSDP) checkpoint folder as one checkpoint file",
    "torchrun": "torch's own torchrun, exiting with the requeue code when signalled (python -m surge.torchrun)",
    "plot": "PNG charts of logged metrics: surge plot <log_dir> [<log_dir> ...] [--out DIR]",
    "run": "run an unmodified Lightning script on surge: surge run train.py [its args] (zero-edit mode)",
}
# Trainer.<stage>() arguments the command line leaves out: the model and data come from --model and --data.
_DATA_ARGS = {"model", "train_dataloaders", "val_dataloaders", "dataloaders", "datamodule"}
CONFIG_FILENAME = "config.yaml"


def _jsonargparse():
    # Imported here, not at the top: `import surge` and `surge demo` must not pay for it.
    try:
        import jsonargparse
    except ImportError as err:
        raise ImportError("surge's command line needs jsonargparse: pip install 'surge[cli]' "
                          "(or pip install jsonargparse)") from err
    return jsonargparse


def _summarize(message: str) -> str:
    """One line naming the key from jsonargparse's (nested, multi-line) error text; the full text follows it.

    Example: 'Parser key "model" ... Parser key "lr": Expected a <class 'float'>. Got value: abc'
    becomes "model.lr: expected float, got 'abc'".
    """
    keys = re.findall(r'Parser key "([^"]+)"', message)
    key = ".".join(keys)
    unknown = re.search(r"Option '([^']+)' is not accepted", message)
    if unknown:
        return f"{key + '.' if key else ''}{unknown.group(1)}: unknown key"
    group = re.search(r"Group '([^']+)' does not accept option '([^']+)'", message)
    if group:
        return f"{group.group(1)}.{group.group(2)}: unknown key"
    option = re.search(r"does not accept option '([^']+)'", message)
    if option:
        return f"{option.group(1)}: unknown key"
    flags = re.search(r"unrecognized arguments: (.*)", message)
    if flags:
        names = [a.lstrip("-").split("=")[0] for a in flags.group(1).split() if a.startswith("--")]
        return f"{', '.join(names) or flags.group(1)}: unknown key"
    cls = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)", message)
    if cls and ("No module named" in cls.group(2) or "has no attribute" in cls.group(2)):
        return f"{key}: cannot import {cls.group(1)!r} ({cls.group(2).strip()})"
    bare = re.search(r"Expected a dot import path string: (\S+)", message)
    if bare:
        return f"{key}: no class named {bare.group(1)!r} is imported; give its import path, e.g. my_package.module.{bare.group(1)}"
    wrong = re.search(r"Expected a <class '(\w+)'>\. Got value: (.*)", message)
    if wrong and key:
        return f"{key}: expected {wrong.group(1)}, got {wrong.group(2).strip()!r}"
    union = re.search(r"Subtypes: \[(.*)\]", message)
    given = re.search(r"Given value: (.*)", message)
    if union and given and key and "class_path" not in message:
        types = " or ".join(re.findall(r"<class '(?:\w+\.)*(\w+)'>", union.group(1))).replace("NoneType", "null")
        return f"{key}: expected {types}, got {given.group(1).strip()!r}"
    return message.strip().splitlines()[0] if message.strip() else "invalid arguments"


def _suggest(key: str, parser) -> str:
    """"; did you mean trainer.max_epochs?" for a key close to one the parser knows ("" when none is)."""
    import difflib

    known, parsers = set(), [parser]
    while parsers:  # the parser's own keys and those of its commands
        for action in parsers.pop()._actions:
            if isinstance(getattr(action, "choices", None), dict):
                parsers.extend(p for p in action.choices.values() if hasattr(p, "_actions"))
            elif action.dest and action.dest != "help":
                known.add(action.dest)
    close = difflib.get_close_matches(key, sorted(known), n=2, cutoff=0.75)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _parser_class():
    ja = _jsonargparse()

    class Parser(ja.ArgumentParser):
        """jsonargparse's parser with a shorter error: one line naming the key, then the details,
        instead of the full usage of a hundred options."""

        def error(self, message: str, ex: Optional[Exception] = None):
            if not self.exit_on_error:
                return super().error(message, ex)
            parser = getattr(ex, "subcommand_parser", None) or self
            prog = parser.prog.replace(" [options]", "")
            summary = _summarize(message)
            if summary.endswith(": unknown key"):
                summary += _suggest(summary.split(":")[0].split(", ")[0], parser)
            sys.stderr.write(f"{prog}: error: {summary}\n")
            if message.strip() != summary.split(";")[0]:
                sys.stderr.write("  " + message.strip().replace("\n", "\n  ") + "\n")
            sys.stderr.write(f"Run `{prog} --help` for the accepted keys.\n")
            self.exit(2)

    return Parser


class SaveConfigCallback(Callback):
    """Writes the run's resolved config to ``<trainer.log_dir>/config.yaml`` when the run starts.

    The file holds every value the run used (defaults included, the seed resolved to a number), so
    ``surge fit --config <log_dir>/config.yaml`` repeats the run. Only global rank 0 writes; a
    ``fast_dev_run`` writes nothing, as it writes no logs or checkpoints either.
    """

    def __init__(self, config_text: str, filename: str = CONFIG_FILENAME) -> None:
        self.config_text = config_text
        self.filename = filename
        self.path: Optional[str] = None
        self._created: list[str] = []  # the folders writing the file created, innermost first
        self._there_before: set = set()  # what the folder held before

    def setup(self, trainer, module, stage: str) -> None:
        if self.path is not None or trainer.fast_dev_run or not trainer.is_global_zero:
            return
        folder, missing = os.path.abspath(trainer.log_dir), []
        while folder and not os.path.isdir(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        os.makedirs(trainer.log_dir, exist_ok=True)
        self._created = missing
        self._there_before = set(os.listdir(trainer.log_dir))
        path = os.path.join(trainer.log_dir, self.filename)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(self.config_text)
        os.replace(tmp, path)  # a reader never sees half a file
        self.path = path

    def undo(self) -> None:
        """The command failed: remove the config file, and the folders it created, if the run wrote nothing
        else there (a failed ``surge test`` leaves no empty ``version_N`` behind)."""
        if self.path is None or not os.path.isfile(self.path) or self.filename in self._there_before:
            return
        folder = os.path.dirname(self.path)
        if set(os.listdir(folder)) - {self.filename} - self._there_before:
            return  # the run wrote logs or checkpoints: they and their config stay together
        os.remove(self.path)
        self.path = None
        for created in self._created:
            try:
                os.rmdir(created)  # only if empty
            except OSError:
                break


class SurgeCLI:
    """Build a Trainer, a Module and a DataModule from a YAML config and command-line flags, then run.

    The flags are typed from the classes' ``__init__`` signatures: ``--trainer.max_epochs 2``,
    ``--model.lr 0.01``, ``--data.batch_size 64``; ``--config run.yaml`` reads a file with the same
    keys (later flags override it) and ``--print_config`` prints the resolved config and exits.
    An unknown key, a value of the wrong type or a class that cannot be imported stops the run
    before anything is built, with a message that names the key.

    Example ``main.py``::

        from surge.cli import SurgeCLI
        from my_project import MyModel, MyData

        if __name__ == "__main__":
            SurgeCLI(MyModel, MyData)       # python main.py fit --config run.yaml --model.lr 0.01

    Arguments:
        model_class: the Module class; ``None`` (or ``subclass_mode_model=True``) lets the config name
            any subclass of it (or of ``surge.Module``) by import path: ``--model my_pkg.MyModel``.
        datamodule_class: the DataModule class, likewise (``--data``). With neither a class nor a
            ``--data``, the run uses the model's own ``*_dataloader`` methods.
        subclass_mode_model / subclass_mode_data: accept subclasses named by ``class_path``.
        args: the arguments to parse (default ``sys.argv[1:]``); a list of strings or a dict.
        run: True: the first argument is a command (fit, validate, test, predict) and the CLI runs it.
            False: no command; build the objects and leave them on ``cli.trainer``, ``cli.model``
            and ``cli.datamodule`` for your code.
        save_config: write ``config.yaml`` to the run's log folder (:class:`SaveConfigCallback`).
        seed_everything_default: the default of ``--seed_everything``: True picks a random seed and
            records it in the saved config; False seeds nothing; an int seeds with it.
        trainer_defaults: defaults for Trainer arguments, e.g. ``{"max_epochs": 5}``.
        trainer_class: the Trainer class (a subclass of ``surge.Trainer``).
        prog / description: shown in ``--help``.

    After the run: ``cli.config`` (the parsed config), ``cli.subcommand``, ``cli.trainer``,
    ``cli.model``, ``cli.datamodule``, ``cli.result`` (what the Trainer method returned).
    """

    def __init__(
        self,
        model_class: Optional[type] = None,
        datamodule_class: Optional[type] = None,
        *,
        subclass_mode_model: bool = False,
        subclass_mode_data: bool = False,
        args: Any = None,
        run: bool = True,
        save_config: bool = True,
        seed_everything_default: Any = True,
        trainer_defaults: Optional[dict] = None,
        trainer_class: Optional[type] = None,
        prog: Optional[str] = None,
        description: Optional[str] = None,
    ) -> None:
        from .datamodule import DataModule
        from .module import Module
        from .trainer import Trainer

        self._ja = _jsonargparse()
        self.model_class = model_class or Module
        self.datamodule_class = datamodule_class or DataModule
        self.subclass_mode_model = subclass_mode_model or model_class is None
        self.subclass_mode_data = subclass_mode_data or datamodule_class is None
        self.datamodule_required = datamodule_class is not None
        self.trainer_class = trainer_class or Trainer
        self.trainer_defaults = dict(trainer_defaults or {})
        self.seed_everything_default = seed_everything_default
        self.save_config = save_config
        self.prog = prog or os.path.basename(sys.argv[0] or "main.py")
        self.description = description

        self.parser = self._build_parser(run)
        self.config = self.parser.parse_args(args) if not isinstance(args, dict) else self.parser.parse_object(args)
        self.subcommand: Optional[str] = self.config["subcommand"] if run else None
        stage_parser = self._parsers[self.subcommand] if run else self.parser
        stage_config = self.config[self.subcommand] if run else self.config
        self._seed(stage_config)
        self.trainer, self.model, self.datamodule = self._instantiate(stage_parser, stage_config)
        self.result = None
        if run:
            self.result = self._run(self.subcommand, stage_config)

    # ------------------------------------------------------------------ extension points
    def add_arguments_to_parser(self, parser) -> None:
        """Override to add your own arguments or ``parser.link_arguments(...)``; called for every command."""

    # ------------------------------------------------------------------ parser
    def _build_parser(self, run: bool):
        self._parser_class = _parser_class()
        self._parsers: dict[str, Any] = {}
        if not run:
            return self._stage_parser(None)
        parser = self._parser_class(prog=self.prog, description=self.description, allow_abbrev=False)
        commands = parser.add_subcommands(required=True, dest="subcommand")
        for stage in STAGES:
            self._parsers[stage] = self._stage_parser(stage)
            commands.add_subcommand(stage, self._parsers[stage], help=_COMMANDS[stage])
        return parser

    def _stage_parser(self, stage: Optional[str]):
        """The parser of one command: --config, --seed_everything, trainer.*, model.*, data.* and the
        arguments of ``Trainer.<stage>()`` itself (``--ckpt_path``, ...)."""
        from .loggers import Logger

        ja = self._ja
        prog = f"{self.prog} {stage}" if stage else self.prog
        parser = self._parser_class(prog=prog, description=_COMMANDS.get(stage, self.description),
                                    allow_abbrev=False)
        parser.add_argument("-c", "--config", action=ja.ActionConfigFile,
                            help="a YAML file with any of the keys below; flags given after it override it")
        parser.add_argument("--seed_everything", type=Union[bool, int], default=self.seed_everything_default,
                            help="an int seeds python, numpy and torch with it; true picks a seed and saves it "
                                 "in config.yaml; false seeds nothing")

        # The Trainer: every __init__ argument, typed from its signature. Callbacks and loggers get
        # precise types here so `--trainer.callbacks+=EarlyStopping` and class_path dicts work.
        parser.add_class_arguments(self.trainer_class, "trainer", skip={"callbacks", "logger"},
                                   instantiate=False, fail_untyped=False, sub_configs=True)
        parser.add_argument("--trainer.callbacks", type=Optional[list[Callback]], default=None,
                            help="callbacks by class path, e.g. --trainer.callbacks+=EarlyStopping "
                                 "--trainer.callbacks.monitor val_loss")
        parser.add_argument("--trainer.logger", type=Optional[Union[bool, Logger, list[Logger]]], default=True,
                            help="true (TensorBoard when installed, else CSV), false, or loggers by class path")
        if self.trainer_defaults:
            parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items()})

        if self.subclass_mode_model:
            parser.add_subclass_arguments(self.model_class, "model", required=True, fail_untyped=False)
        else:
            parser.add_class_arguments(self.model_class, "model", fail_untyped=False, sub_configs=True)
        if self.subclass_mode_data:
            parser.add_subclass_arguments(self.datamodule_class, "data", required=self.datamodule_required,
                                          fail_untyped=False)
        else:
            parser.add_class_arguments(self.datamodule_class, "data", fail_untyped=False, sub_configs=True)

        if stage is not None:
            parser.add_method_arguments(self.trainer_class, stage, skip=_DATA_ARGS, fail_untyped=False)
        self.add_arguments_to_parser(parser)
        return parser

    # ------------------------------------------------------------------ building the run
    def _seed(self, config) -> None:
        from .seed import seed_everything

        seed = config.get("seed_everything")
        if seed is True:
            # Pick one and write it back, so the saved config.yaml repeats this exact run. The ranks a
            # DDP launcher starts run this command again: they inherit the environment variable that
            # seed_everything sets, and so take rank 0's seed.
            inherited = os.environ.get("SURGE_GLOBAL_SEED", "")
            seed = int(inherited) if inherited.isdigit() else random.randint(0, 2**31 - 1)
            config["seed_everything"] = seed
        if seed is not None and seed is not False:
            seed_everything(seed, workers=True)

    def _instantiate(self, parser, config):
        from .utils import SurgeError

        text = parser.dump(config, skip_unset=False)  # nulls too: a null that overrides a default must survive
        init = parser.instantiate(config)
        trainer_kwargs = dict(init["trainer"])
        callbacks = trainer_kwargs.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if self.save_config:
            callbacks.append(SaveConfigCallback(text))
        trainer_kwargs["callbacks"] = callbacks
        if trainer_kwargs.get("logger") is None:
            trainer_kwargs["logger"] = True
        try:
            trainer = self.trainer_class(**trainer_kwargs)
        except SurgeError as err:  # a bad value the types allowed (e.g. accelerator='gpu' on a CPU machine)
            self._error(f"trainer: {err}")
        return trainer, init["model"], init.get("data")

    def _run(self, stage: str, config):
        from .utils import SurgeError

        kwargs = {k: config[k] for k in self._method_keys(stage) if k in config}
        fn = getattr(self.trainer, stage)
        if self.datamodule is not None:
            kwargs["datamodule"] = self.datamodule
        # ckpt_path="last"/"best" of a config saved in a run's folder means that run's checkpoints.
        self.trainer._cli_checkpoint_folders = _run_checkpoint_folders(config.get("config"))
        try:
            return fn(self.model, **kwargs)
        except BaseException as err:
            for cb in self.trainer.callbacks:
                if isinstance(cb, SaveConfigCallback):
                    cb.undo()
            if isinstance(err, SurgeError):  # surge's own message says what and where: no traceback
                print(f"{self.prog} {stage}: error: {_one_line(err)}", file=sys.stderr)
                raise SystemExit(1) from None
            raise

    def _method_keys(self, stage: str) -> list[str]:
        import inspect

        params = inspect.signature(getattr(self.trainer_class, stage)).parameters
        return [name for name in params if name not in _DATA_ARGS and name != "self"]

    def _error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _one_line(err: BaseException) -> str:
    """An error's message on one line (a multi-line message's lines joined)."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def _run_checkpoint_folders(config_files) -> list[str]:
    """``<folder>/checkpoints`` of each ``--config`` file that lies in a run's folder (next to its checkpoints)."""
    folders = []
    for entry in config_files or []:
        path = getattr(entry, "absolute", None) or os.path.abspath(os.fspath(entry))
        candidate = os.path.join(os.path.dirname(path), "checkpoints")
        if os.path.isdir(candidate):
            folders.append(candidate)
    return folders


def _print_help() -> None:
    print("usage: surge COMMAND [options]\n\ncommands:")
    for name, text in _COMMANDS.items():
        print(f"  {name:<9} {text}")
    print("\nexamples:\n"
          "  surge fit --config run.yaml --trainer.max_epochs 2 --model.lr 0.01\n"
          "  surge fit --model surge.demos.digits.DigitsClassifier --data surge.demos.digits.DigitsDataModule\n"
          "  surge fit --config run.yaml --print_config\n"
          "  surge demo --max-epochs 3\n"
          "  surge run train.py --trainer.max_epochs 1     # a Lightning script, unchanged\n\n"
          "Run `surge COMMAND --help` for a command's options; docs/cli.md has the details.")


def main(argv=None) -> int:
    """Entry point of the ``surge`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print_help()
        return 0
    if argv[0] == "--version":
        from . import __version__

        print(f"surge {__version__}")
        return 0
    command = argv[0]
    from .utils import SurgeError

    try:
        return _command(command, argv)
    except SurgeError as err:  # surge's own errors name the file or argument: one line, no traceback
        print(f"surge {command}: error: {_one_line(err)}", file=sys.stderr)
        return 1


def _command(command: str, argv: list) -> int:
    if command == "demo":
        from .demos.digits import main as demo_main

        demo_main(argv[1:])
        return 0
    if command == "consolidate":
        from .strategies.fsdp import main as consolidate_main

        return consolidate_main(argv[1:])
    if command == "torchrun":
        from .torchrun import main as torchrun_main

        return torchrun_main(argv[1:])
    if command == "plot":
        from .plot import main as plot_main

        return plot_main(argv[1:])
    if command == "run":
        from .lightning.zero_edit import main as run_main

        return run_main(argv[1:], prog="surge run")
    if command in STAGES:
        # Classes in the current folder import as with `python -m`: --model my_pkg.MyModel
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        # The demos' classes, imported so their short names work: --model ToyModel --data ToyDataModule
        from .demos import boring, digits, toy  # noqa: F401

        SurgeCLI(args=argv, prog="surge")
        return 0
    print(f"surge: unknown command {command!r}; the commands are: {', '.join(_COMMANDS)} (see `surge --help`)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
