"""Model builders: `build(num_classes, image_size, ...) -> keras.Model` mapping (H, W, 3) float
RGB in [0, 1] to (H, W, num_classes) float32 logits.  The config's `_target_` picks one."""

# Lazy imports: Keras loads when a model is built or saved; the config's checks import seglab.models.facts first.


def inference_model(model):
    """The same layers and weights without the compiled loss, metrics and optimizer, so the saved
    file loads with plain Keras (no seglab classes needed) and takes raw [0, 1] RGB images."""
    import keras

    return keras.Model(model.inputs, model.outputs, name=model.name)
