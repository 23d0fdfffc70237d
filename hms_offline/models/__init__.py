"""The models: the architecture registry, the weights manifest that lists an ensemble, the
engines that run a model (keras / saved_model / tflite) and the export that proves the last two."""
