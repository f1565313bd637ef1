"""The model registry: a logged model becomes a new version of a registered model, tagged with the
run's key scores; an alias (e.g. `champion`) is moved to a version after it was scored.  Any tool
that loads a model then takes `models:/<name>@<alias>` (MLflow resolves it)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from seglab.tracking.store import TrackingError, check_reachable, first_line

REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


def register(model_uri: str, name: str, tags: Mapping[str, Any]) -> str:
    """Register the model at `model_uri` (in the current tracking store) as a new version of `name`; its version."""
    version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    return str(version.version)


def registered_version(model_uri: str, tracking_uri: str) -> tuple[str, str]:
    """(name, version) of a registry URI, `models:/<name>/<version>` or `models:/<name>@<alias>`."""
    found = REGISTRY_URI.match(model_uri)
    if not found:
        raise TrackingError(
            f"set_alias needs a registered model, but model_uri={model_uri} is not one: use models:/<name>/<version> "
            "(register a training run's model with tracking.register_as=<name>)."
        )
    check_reachable(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    name = found["name"]
    if found["version"]:
        return name, found["version"]
    try:
        return name, str(client.get_model_version_by_alias(name, found["alias"]).version)
    except MlflowException as err:
        raise TrackingError(f"model_uri={model_uri}: {first_line(err)}") from err


def set_alias(name: str, version: str, alias: str, tracking_uri: str) -> None:
    """Point `models:/<name>@<alias>` at `version` (moved from any version it named before)."""
    try:
        mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(name, alias, version)
    except MlflowException as err:
        raise TrackingError(f"set_alias={alias} on {name} version {version}: {first_line(err)}") from err
