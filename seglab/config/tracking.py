"""The tracking group's schema (conf/tracking/mlflow.yaml): the MLflow store, experiment and logged model."""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf

from seglab.config.check import require

# The store of every command when the command line does not name one (tracking.uri=, report's --tracking-uri):
# $MLFLOW_TRACKING_URI, as MLflow's own tools (mlflow ui, mlflow models serve) read it, else ./mlflow.db.  The YAML's
# `uri: ${seglab_tracking_uri:}` and the other commands' defaults all resolve through `default_uri`.
URI_ENV = "MLFLOW_TRACKING_URI"
LOCAL_URI = "sqlite:///mlflow.db"
DEFAULT_URI = "${seglab_tracking_uri:}"  # as a dataclass default: resolved when the command's config is read


def default_uri() -> str:
    """$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (an empty variable counts as unset, as MLflow counts it)."""
    return os.environ.get(URI_ENV) or LOCAL_URI


OmegaConf.register_new_resolver("seglab_tracking_uri", default_uri, replace=True)


def uri_key(uri: str, key: str = "tracking.uri") -> str:
    """How to name `uri` in a message: as $MLFLOW_TRACKING_URI when it is that variable's value, else as `key`."""
    return URI_ENV if uri and os.environ.get(URI_ENV) == uri else key


def sqlite_file(uri: str) -> str:
    """The file of a `sqlite:///` URI as written (relative, `~`, or `:memory:`); "" for any other store."""
    return uri.removeprefix("sqlite:///").split("?", 1)[0] if uri.startswith("sqlite:///") else ""


LOG_MODEL = ("best", "last", False)
# What MLflow's model registry refuses in a registered model's name (mlflow.utils.validation._validate_model_name,
# and its file store's path separators and '%'); refused here, before training, not after the model is logged.
NAME_FORBIDDEN = ("/", ":", "%", "\\")


def registered_name_problem(name: str) -> str | None:
    """Why MLflow would refuse `name` as a registered model name; None when it takes it."""
    found = [c for c in NAME_FORBIDDEN if c in name]
    if found:
        return f"a registered model name cannot contain {' or '.join(repr(c) for c in found)}"
    norm = posixpath.normpath(name)
    if norm != name or norm == "." or norm.startswith(".."):
        return f"a registered model name must not read as a path ({name!r} would be {norm!r})"
    return None


# Aliases MLflow's registry reserves (mlflow.utils.validation._validate_model_alias_name_reserved): in
# models:/<name>@<alias>, `latest` (any case) is the newest version and v<N> version N.
RESERVED_VERSION_ALIAS = re.compile(r"[vV]\d+")


def alias_problem(alias: str) -> str | None:
    """Why MLflow would refuse `alias` for a registered version (only after the work before it); None when it takes it."""
    if alias.lower() == "latest":
        return "MLflow reserves `latest` (in any case) for the newest version of a registered model"
    if RESERVED_VERSION_ALIAS.fullmatch(alias):
        return f"MLflow reserves v<number> for the versions themselves (models:/<name>@{alias} is version {alias[1:]})"
    return None


@dataclass
class TrackingRef:
    """The tracking group of the commands that read a logged model (predict, export): the store alone."""

    uri: str = DEFAULT_URI  # $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db


@dataclass
class TrackingConfig:
    uri: str = MISSING
    experiment: str = MISSING
    run_name: Optional[str] = MISSING  # null: "<model>-<loss>-<data>" from the chosen config options
    log_model: Any = MISSING  # best | last | false
    register_as: Optional[str] = MISSING  # a registered model name: each run's logged model becomes a new version
    # Set by a sweep (seglab.engine.sweep.PARENT_RUN_ENV) so each job's run is a child of the sweep's parent run.
    parent_run_id: Optional[str] = MISSING

    def __post_init__(self) -> None:
        require(self.log_model in LOG_MODEL, "tracking.log_model", self.log_model,
                "use best (the weights of the best epoch by optimize_metric), last (those of the last epoch) or false")
        require(bool(self.uri.strip()), "tracking.uri", self.uri, "give a tracking URI, e.g. sqlite:///mlflow.db or http://host:5000")
        require(bool(self.experiment.strip()), "tracking.experiment", self.experiment, "give an MLflow experiment name, e.g. seglab-shapes")
        require(self.register_as is None or (bool(self.register_as.strip()) and bool(self.log_model)),
                "tracking.register_as", self.register_as,
                "a registered model needs a logged one: give a non-empty name and keep tracking.log_model on")
        problem = self.register_as and registered_name_problem(self.register_as)
        require(not problem, "tracking.register_as", self.register_as,
                f"{problem}; use letters, digits, '-', '_', '.' (e.g. team-seg; MLflow numbers the versions itself)")


# The ConfigStore entries (GROUP/NAME) that the option YAMLs name in their defaults lists.
SCHEMAS = {
    "tracking/tracking_schema": TrackingConfig,
}
