"""What MLflow runs to build the served model when it loads it ("models from code": the model is this
file, not a pickled Python object; https://mlflow.org/docs/latest/ml/model/models-from-code/)."""

import mlflow

from seglab.tracking.served import ImageSegmenter

mlflow.models.set_model(ImageSegmenter())
