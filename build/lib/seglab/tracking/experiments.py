"""The experiments seglab's runs go in: every one is found or created by `experiment_id`, which marks it
as model training for MLflow 3's UI (tag `mlflow.experimentKind`), so that a run, a sweep's parent, a
failed job's record and `seglab.check_determinism`'s throw-away store all land in such an experiment."""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from seglab.tracking import tags


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created if there is none (its artifacts in `artifact_location`, else
    the store's default).  An experiment without a kind (e.g. made by an earlier seglab, or by
    `mlflow.set_experiment`) is given the model-training kind; one whose kind a user chose keeps it."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location,
                                            tags={tags.EXPERIMENT_KIND: tags.EXPERIMENT_KIND_MODEL_TRAINING})
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = client.get_experiment_by_name(name)  # another job of the sweep created it just now
    if tags.EXPERIMENT_KIND not in found.tags:
        client.set_experiment_tag(found.experiment_id, tags.EXPERIMENT_KIND, tags.EXPERIMENT_KIND_MODEL_TRAINING)
    return found.experiment_id

