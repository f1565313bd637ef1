"""One error handler for every seglab command line: a user's mistake is one line on stderr,
`<command>: <what is wrong, naming the key or file, and the fix>`, and exit code 2, never a
traceback.  `HYDRA_FULL_ERROR=1` (Hydra's own switch) shows the full traceback instead.

What counts as a user's mistake: a `UserError` (seglab's errors whose message names the key or
file and the fix: ConfigError, DataError, TrackingError, ...) and Hydra's / OmegaConf's
composition errors (an unknown key, a misspelt option, a value of the wrong type, a malformed
override), a config file that is not valid YAML, a file the operating system refuses (named, with
its reason), an optuna search none of whose trials finished, and a sweep's scheduler missing or refusing its
jobs (`hydra/launcher=slurm` without SLURM, or asking for what the cluster lacks).  Anything else
is a bug and keeps its traceback.
Ctrl-C and SIGTERM are one line too (`Interrupted`: where it stopped and how to go on), exit code
130 or 143 (128 + the signal, as a shell reports it).

Nothing here imports TensorFlow or MLflow: it runs before either loads.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import (
    HydraException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
    SearchPathException,
)
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

EXIT_USER_ERROR = 2  # argparse's code for a usage error; 1 stays for crashes
SLURM_COMMANDS = ("sbatch", "srun", "scontrol", "sacct", "squeue", "scancel")  # what submitit calls
reported: str | None = None  # the line `fail` printed; a sweep's parent run ends with it as its reason
interrupted_by: str | None = None  # "SIGTERM" or "Ctrl-C" once `interrupted` answered one: a sweep's parent then ends KILLED
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command ended by Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_READER_GONE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head -1`'s writer
HYDRA_FULL_ERROR = "HYDRA_FULL_ERROR"  # Hydra's switch: raise, not print, what it catches
USER_FULL_ERROR = "SEGLAB_USER_FULL_ERROR"  # HYDRA_FULL_ERROR as the user set it, while `hydra_main` sets it


class UserError(Exception):
    """A mistake in the command, the config or the data; the message names it and the fix."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM ended the command: `main` prints the message (where it stopped, how to go on)
    as one line and exits with `exit_code`.  A KeyboardInterrupt, so whatever stops on Ctrl-C stops on it."""

    def __init__(self, message: str, exit_code: int = EXIT_INTERRUPTED):
        super().__init__(message)
        self.exit_code = exit_code


def full_error() -> bool:
    """The user asked for full tracebacks (HYDRA_FULL_ERROR=1, Hydra's own switch, as it was before `hydra_main`)."""
    return os.environ.get(USER_FULL_ERROR, os.environ.get(HYDRA_FULL_ERROR, "")) not in ("", "0")


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def explain(err: BaseException) -> str | None:
    """The one-line message for a user's mistake; None for anything else (a bug: keep the traceback)."""

    seen: BaseException | None = err
    while seen is not None:  # Hydra's instantiate wraps what a builder raised (e.g. a DataError)
        if isinstance(seen, UserError):
            return one_line(seen)
        seen = seen.__cause__
    label_check = _LABEL_CHECK.search(str(err))
    if label_check:  # a data check inside the tf.data graph, raised by TensorFlow mid-epoch
        return one_line(" ".join(part.strip() for part in label_check.groups() if part))
    if type(err).__name__ == "DataLossError":  # TensorFlow met a damaged record file mid-pass; it names no file
        return (f"a data file is damaged ({one_line(str(err).split('[[')[0]).rstrip(' .')}): find it with "
                "`python -m seglab.data inspect PATH`, then write or copy it again")
    undecodable = _UNDECODABLE.search(str(err)) if type(err).__name__ == "InvalidArgumentError" else None
    if undecodable:  # an encoded image TensorFlow's decoder refused mid-pass (a record's bytes; it names no file)
        return (f"an image or mask cannot be decoded ({undecodable.group(1).strip(' .')}): write it again, or where the "
                "data are TFRecords check data.source.encoding / mask_encoding")
    if isinstance(err, HydraException):
        return _hydra_message(err)
    if isinstance(err, OmegaConfBaseException):
        return _omegaconf_message(err)
    if isinstance(err, UnicodeDecodeError) and any(f.filename.endswith("config_source.py")  # Hydra reading a config file
                                                   for f in traceback.extract_tb(err.__traceback__)):
        return _undecodable_config_file()
    if isinstance(err, yaml.YAMLError):  # a config file that does not parse, most likely one of the user's own (--config-dir)
        return f"not valid YAML: {one_line(err)}; fix the file at the line named"
    if isinstance(err, ValueError) and str(err) == _NO_TRIAL_FINISHED:
        return ("no trial of the search finished, so optuna has no best trial: each trial's MLflow child run has its error "
                "as the `error` tag (`python -m seglab.report <experiment>` lists them); fix the search space or the fixed settings")
    return _scheduler_message(err) or _file_message(err)


def _file_message(err: BaseException) -> str | None:
    """A file or directory the operating system refused (no such file, no permission, a directory where a
    file was expected, a full or read-only disk): the path and the reason, whichever command met it."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.filename is not None:
            path = seen.filename if seen.filename2 is None else f"{seen.filename} -> {seen.filename2}"
            return (f"{path}: {seen.strerror or one_line(seen)}; check the path, its permissions and the free space "
                    "(HYDRA_FULL_ERROR=1 shows where seglab met it)")
        seen = seen.__cause__ or seen.__context__
    return None


# optuna's Study.best_trial when every trial failed (hydra-optuna-sweeper asks for it after the last trial)
_NO_TRIAL_FINISHED = "No trials are completed yet."


def _scheduler_message(err: BaseException) -> str | None:
    """SLURM's commands missing, or sbatch refusing a submission (no cluster, an unknown partition, GPUs
    the cluster lacks): the user's setup, not a bug.  Job failures after submission are not matched."""

    seen: BaseException | None = err
    while seen is not None:
        missing = seen.filename if isinstance(seen, FileNotFoundError) else None
        no_srun = _NO_SRUN.search(str(seen)) if isinstance(seen, RuntimeError) else None  # submitit's own check
        command = missing if missing in SLURM_COMMANDS else no_srun.group(1) if no_srun else None
        if command:
            return (f"`{command}` not found: hydra/launcher=slurm and submitit_slurm submit through SLURM's "
                    "commands; run the sweep where SLURM is (a login node), or use hydra/launcher=submitit_local")
        if isinstance(seen, subprocess.CalledProcessError) and seen.cmd and seen.cmd[0] in SLURM_COMMANDS:
            said = one_line(seen.stderr or "") or f"exit code {seen.returncode}"
            return (f"SLURM refused the sweep's jobs ({seen.cmd[0]}: {said}); check that `sinfo` answers here and that "
                    "the hydra.launcher values (partition, gpus_per_node, cpus_per_task, mem_gb) fit the cluster")
        seen = seen.__cause__ or seen.__context__
    return None


def fail(prog: str, message: str) -> None:
    global reported
    reported = message
    print(f"{prog}: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def interrupted(prog: str, err: KeyboardInterrupt) -> None:
    """Ctrl-C or SIGTERM: one line (no traceback) and exit code 130 or 143."""
    global interrupted_by
    interrupted_by = "SIGTERM" if getattr(err, "exit_code", None) == EXIT_TERMINATED else "Ctrl-C"
    if full_error():
        raise err
    print(f"{prog}: {err if isinstance(err, Interrupted) else 'interrupted (Ctrl-C)'}", file=sys.stderr)
    sys.exit(getattr(err, "exit_code", EXIT_INTERRUPTED))


def reader_gone() -> None:
    """The reader of stdout left (`python -m seglab.predict --help | head -1`): no traceback, and none
    when Python flushes stdout at exit either (the recipe of Python's `signal` documentation)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(EXIT_READER_GONE)


def main(entry: Callable[..., Any], *args: Any, prog: str) -> Any:
    """Call a command's `entry(*args)`; a user's mistake ends the process with one line, and so does Ctrl-C."""
    try:
        try:
            return entry(*args)
        finally:  # also after argparse's --help (SystemExit)
            sys.stdout.flush()  # a reader that left is answered here (`reader_gone`), not by Python's flush at exit
    except KeyboardInterrupt as err:
        interrupted(prog, err)
    except BrokenPipeError:
        reader_gone()
    except Exception as err:
        message = None if full_error() else explain(err)
        if message is None:
            raise
        fail(prog, message)


def hydra_main(task: Callable[[], Any], prog: str = "seglab") -> Any:
    """Run a `@hydra.main` function: a user's mistake, met by Hydra while it composes the config or raised
    by the task, is one line; anything else keeps its traceback.

    Hydra prints what it catches (a shortened traceback, or OmegaConf's multi-line message) unless its
    documented switch HYDRA_FULL_ERROR is set: then it raises.  So the switch is set for this call, and what
    Hydra raises is explained here; the user's own setting is kept in USER_FULL_ERROR (also for the sweep's
    job processes, which inherit both), and `full_error` reads that."""
    before = {name: os.environ.get(name) for name in (HYDRA_FULL_ERROR, USER_FULL_ERROR)}
    os.environ[USER_FULL_ERROR] = "1" if full_error() else ""
    os.environ[HYDRA_FULL_ERROR] = "1"

    def composed_and_run() -> Any:  # answered as `main` answers (e.g. Ctrl-C in a sweep, or while Hydra composes)
        try:
            return task()
        finally:
            for name, value in before.items():
                _restore(name, value)

    return main(composed_and_run, prog=prog)


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


_NO_SRUN = re.compile(r'Could not detect "(srun)", are you indeed on a slurm cluster')

# --- Hydra and OmegaConf messages -> one line ----------------------------------------------
# From the exception types and attributes hydra.errors and omegaconf.errors define (the option a missing config
# names, the full key and value of an OmegaConf error).  Two facts no attribute holds are read from Hydra's text,
# each with a way out if the text changes: the target of an `instantiate` that names nothing (else: a traceback,
# as for a bug) and the config file whose keys do not fit the schema (else: the message without the file's name).

# What TensorFlow's image decoders say of bytes they cannot decode
_UNDECODABLE = re.compile(r"(Invalid PNG[^\[\n]*|Invalid JPEG data[^\[\n]*|Unknown image file format[^\[\n]*|jpeg::Uncompress failed[^\[\n]*)")
# tf.debugging.Assert's message: "assertion failed: [seglab label check: ...] [file:] [path]"
_LABEL_CHECK = re.compile(r"\[(seglab label check:[^\]]*)\](?: \[(file:)\] \[([^\]]*)\])?")
_TARGET = re.compile(r"Error locating target '([^']+)'")
_FULL_KEY = re.compile(r"full_key: (\S+)")
_COMPOSING = re.compile(r"In '([^']+)': \w+ raised while composing config")
_SCHEMA_SUFFIX = "_schema"


def _hydra_message(err: BaseException) -> str | None:

    if isinstance(err, InstantiationException):
        return _unknown_target(err)  # None: a builder failed on something that is not a UserError, a bug: keep the traceback
    text = str(err)
    if isinstance(err, MissingConfigException):
        return _missing_option(err, text)
    if isinstance(err, SearchPathException):  # --config-dir naming no directory
        return (f"{one_line(text)}: give --config-dir the directory that holds your own config groups "
                "(e.g. --config-dir my_conf for my_conf/experiment/NAME.yaml, then +experiment=NAME)")
    if isinstance(err, OverrideParseException):
        return f"cannot read the override: {one_line(text)}. Write overrides as key=value; a value with spaces or characters such as ~ goes in quotes Hydra sees, e.g. \"key='~/a b'\"."
    cause = err.__cause__
    if cause is None and _is_omegaconf(err.__context__):  # a config file whose keys do not fit the schema (a user's own option)
        composing = _COMPOSING.match(text)
        message = _omegaconf_message(err.__context__)
        if not composing:
            return message
        return _config_file_message(composing.group(1), message) or f"in {composing.group(1)}.yaml: {message}"
    if cause is not None:  # an override Hydra could not apply: OmegaConf's error names the key and the value
        return _omegaconf_message(cause) if _is_omegaconf(cause) else f"{one_line(text)}: {one_line(cause)}"
    return one_line(text)


def _config_files() -> list[Path]:
    """The YAML files of the config search path (conf/, --config-dir) while Hydra has one; after Hydra has let go of
    it (it raised), those of the command line's --config-dir, the only files that are not seglab's own."""
    if GlobalHydra.instance().is_initialized():
        roots = [Path(s.path) for s in GlobalHydra.instance().config_loader().get_sources() if s.scheme() == "file"]
    else:
        roots = [Path(value) for value in _config_dirs(sys.argv[1:])]
    return [path for root in roots if root.is_dir() for path in sorted(root.rglob("*.yaml"))]


def _config_dirs(argv: list[str]) -> list[str]:
    """The directories `--config-dir DIR`, `--config-dir=DIR` or `-cd DIR` name."""
    found = []
    for flag, value in zip(argv, [*argv[1:], ""]):
        if flag in ("--config-dir", "-cd"):
            found.append(value)
        elif flag.startswith("--config-dir="):
            found.append(flag.split("=", 1)[1])
    return found


def _undecodable_config_file() -> str | None:
    for path in _config_files():
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError as bad:
            return (f"{path}: not UTF-8 (byte {bad.object[bad.start]:#x} at position {bad.start}), and Hydra reads config "
                    "files as UTF-8: save it as UTF-8 (e.g. with iconv -f latin1 -t utf-8)")
    return None


def _config_file_message(name: str, message: str) -> str | None:
    """What is wrong with the config file `name` (e.g. experiment/mine) itself, when the file says: a YAML list where
    keys belong, or a preset without `# @package _global_` (its keys then land under its group: `experiment.trainer`)."""
    path = next((p for p in _config_files() if p.with_suffix("").as_posix().endswith(f"/{name}")), None)
    try:  # the file Hydra read: the first of that name in the search path
        text = path.read_text(encoding="utf-8") if path else ""
        loaded = yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    group = name.split("/")[0]
    if isinstance(loaded, list):
        return (f"{path} is a YAML list, but a config file is a mapping of keys: write `trainer:` and below it `  epochs: 2`, "
                "not `- trainer.epochs=2` (overrides go on the command line)")
    if isinstance(loaded, dict) and "@package" not in text and message.startswith(f"{group} is not a config key"):
        return (f"{path} has no `# @package _global_` line, so its keys went under `{group}.` ({group}.{next(iter(loaded))}, "
                f"...), which the config has not: add `# @package _global_` as its first line")
    return None


def _unknown_target(err: BaseException) -> str | None:
    """A `_target_` naming a module or attribute that does not exist, e.g. a module path of before the
    layered layout in a user's own config; None when the target exists but importing it failed (a bug)."""
    found = _TARGET.search(str(err))
    why = getattr(err.__cause__, "__cause__", None)  # Hydra's ImportError wraps what importing raised
    if found is None or why is None:
        return None
    target = found.group(1)
    module_missing = isinstance(why, ModuleNotFoundError) and f"{target}.".startswith(f"{why.name}.")
    if not (module_missing or isinstance(why, AttributeError)):
        return None
    module, _, name = target.rpartition(".")
    reason = one_line(why)
    if module_missing and why.name == target and "is not a package" in reason:  # Hydra's last try: the name as a module
        reason = f"module '{module}' has no attribute '{name}'"
    where = _FULL_KEY.search(str(err))
    return (f"{where.group(1) + '.' if where else ''}_target_={target}: {reason}; module paths that moved "
            "in seglab's layered layout are listed in docs/configuration.md")


def _missing_option(err: MissingConfigException, text: str) -> str:
    """`model=unett` -> the group's real options (without the `*_schema` entries the ConfigStore adds)."""
    wanted = err.missing_cfg_file or "?"
    group, _, option = wanted.rpartition("/")
    options = [o for o in (err.options or []) if not o.endswith(_SCHEMA_SUFFIX)]
    if not group:
        return f"no config named {wanted!r}: {one_line(text)}"
    hint = _did_you_mean(option, options)
    return (
        f"{group}={option}: no such option in conf/{group}/;{hint} choose one of {', '.join(options)}"
        if options else f"{group}={option}: no such option (conf/{group}/{option}.yaml does not exist)"
    )


def _is_omegaconf(err: BaseException) -> bool:

    return isinstance(err, OmegaConfBaseException)


def _omegaconf_message(err: BaseException) -> str:

    key = getattr(err, "full_key", None)
    msg = getattr(err, "msg", None) or str(err)
    first = msg.splitlines()[0] if msg.strip() else type(err).__name__
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and ("not in" in first or "Missing key" in first):
        return unknown_key_message(key or "?", _sibling_keys(err))
    if isinstance(err, MissingMandatoryValue):
        return f"{key} is required and has no value: set it, e.g. {key}=..."
    if isinstance(err, ValidationError):
        value = getattr(err, "value", None)
        return f"{key}={value}: {first.rstrip('.')}; give a value of the type the key takes (see `python -m seglab --cfg job`)"
    return f"{key + ': ' if key else ''}{first}"


def _sibling_keys(err: BaseException) -> list[str]:
    parent = getattr(err, "parent_node", None)
    try:
        return [str(k) for k in parent.keys()] if parent is not None else []
    except Exception:  # noqa: BLE001  only a hint: any node type without keys gives none
        return []


def unknown_key_message(key: str, known: list[str]) -> str:
    """`trainer.epoch` -> names the real keys of its node and the closest one."""
    parent, _, name = key.lstrip("+~").rpartition(".")
    where = parent or "the top level"
    hint = _did_you_mean(name, known)
    listed = f" ({where} has {', '.join(sorted(known))})" if known else ""
    return f"{key} is not a config key{listed};{hint} remove it or fix the spelling"


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" did you mean {close[0]}?" if close else ""


def argument_parser(**kwargs: Any):
    """argparse, but a usage mistake is a UserError (one line through `main`), not two lines and exit."""

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise UserError(f"{message}; usage: {one_line(self.format_usage()).removeprefix('usage: ')}")

    return Parser(**kwargs)
