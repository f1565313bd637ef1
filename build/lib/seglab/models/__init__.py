"""Model builders: `build(num_classes, image_size, ...) -> keras.Model` mapping (H, W, 3) float
RGB in [0, 1] to (H, W, num_classes) float32 logits.  The config's `_target_` picks one."""
