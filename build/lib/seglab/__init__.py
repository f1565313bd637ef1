"""seglab: semantic-segmentation experiments in TensorFlow/Keras, configured by Hydra, tracked in MLflow."""

__version__ = "0.1.0"
