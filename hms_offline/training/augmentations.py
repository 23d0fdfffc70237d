"""Training-batch augmentation with keras-cv's own layers, as in the starter, and left/right
mirroring.

Mirroring (`mirror_p`, off by default) swaps the left and right chains of each image on its
own with that probability: the row blocks LL <-> RL and LP <-> RP, which every input view
lays out alike (features/views.py's MIRROR_ROWS). The targets stay: no class of the
competition says which side. It runs first, so MixUp can blend a mirrored image.

Each keras-cv augmenter is applied to a whole batch with its own probability (0.5 by default):
MixUp(alpha=2.0), then a time mask, then a frequency mask. The image is `[400 frequency
rows, 300 time columns]`, so a full-height RandomCutout masks a span of time and a
full-width one masks a band of frequencies (the starter's notebook labels the two the other
way round; the layers and factors are its own). keras-cv centres each cutout on a random
pixel and clips it to the image, so a "full" side covers between half and all of it.
"""

# A span of 6-10 % of the 300 time columns across every frequency.
TIME_MASK = {"height_factor": (1.0, 1.0), "width_factor": (0.06, 0.1)}
# A band of 6-10 % of the 400 frequency rows across all time.
FREQUENCY_MASK = {"height_factor": (0.06, 0.1), "width_factor": (1.0, 1.0)}


def build_augmenter(mixup_p: float, mixup_alpha: float, time_mask_p: float, freq_mask_p: float, seed: int,
                    mirror_p: float = 0.0):
    """`augment(images, labels) -> (images, labels)` for `tf.data` batches, or None when
    every probability is 0."""
    import keras_cv
    import tensorflow as tf

    candidates = [
        (mixup_p, lambda: keras_cv.layers.MixUp(alpha=mixup_alpha, seed=seed)),
        (time_mask_p, lambda: keras_cv.layers.RandomCutout(**TIME_MASK, seed=seed + 1)),
        (freq_mask_p, lambda: keras_cv.layers.RandomCutout(**FREQUENCY_MASK, seed=seed + 2)),
    ]
    layers = [(probability, make()) for probability, make in candidates if probability > 0]
    if not layers and mirror_p <= 0:
        return None
    mirror = mirror_images(mirror_p, seed + 3) if mirror_p > 0 else None

    def augment(images, labels):
        if mirror is not None:
            images = mirror(images)
        batch = {"images": images, "labels": labels}
        for probability, layer in layers:
            batch = tf.cond(
                tf.random.uniform([]) < probability,
                lambda layer=layer, batch=batch: _apply(layer, batch),
                lambda batch=batch: batch,
            )
        return batch["images"], batch["labels"]

    return augment


def _apply(layer, batch: dict) -> dict:
    out = layer(batch, training=True)
    return {"images": out["images"], "labels": out["labels"]}


def mirror_images(probability: float, seed: int):
    """`mirror(images) -> images`: each `[batch, 400, W, C]` image's rows permuted by
    MIRROR_ROWS with `probability`, on its own."""
    import tensorflow as tf

    from hms_offline.features.views import MIRROR_ROWS

    rows = tf.constant(MIRROR_ROWS, dtype=tf.int32)

    def mirror(images):
        flip = tf.random.uniform([tf.shape(images)[0], 1, 1, 1], seed=seed) < probability
        return tf.where(flip, tf.gather(images, rows, axis=1), images)

    return mirror
