"""Architecture registry: keras-cv backbones built offline from explicit arguments.

Every keras-cv `from_preset(...)`, even the architecture-only aliases such as
`MobileNetV3LargeBackbone()`, downloads its config from Kaggle Models and fails with the
internet off. So each backbone here is spelled out with the arguments of its preset.
TensorFlow / keras / keras-cv are imported inside the functions, never at module import.
"""

import json
from pathlib import Path

from hms_offline.constants import CLASSES, IMAGE_SHAPE

# keras-cv's "mobilenet_v3_large" preset, argument for argument.
MOBILENETV3_LARGE_ARGS = dict(
    stackwise_expansion=[1, 4, 3, 3, 3, 3, 6, 2.5, 2.3, 2.3, 6, 6, 6, 6, 6],
    stackwise_filters=[16, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 160, 160, 160],
    stackwise_kernel_size=[3, 3, 3, 5, 5, 5, 3, 3, 3, 3, 3, 3, 5, 5, 5],
    stackwise_stride=[1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1],
    stackwise_se_ratio=[None] * 3 + [0.25] * 3 + [None] * 4 + [0.25] * 5,
    stackwise_activation=["relu"] * 6 + ["hard_swish"] * 9,
)

# keras-cv's "efficientnetv2_b2" preset, argument for argument.
EFFICIENTNETV2_B2_ARGS = dict(
    width_coefficient=1.1,
    depth_coefficient=1.2,
    stackwise_kernel_sizes=[3] * 6,
    stackwise_num_repeats=[1, 2, 2, 3, 5, 8],
    stackwise_input_filters=[32, 16, 32, 48, 96, 112],
    stackwise_output_filters=[16, 32, 48, 96, 112, 192],
    stackwise_expansion_ratios=[1, 4, 4, 4, 6, 6],
    stackwise_squeeze_and_excite_ratios=[0, 0, 0, 0.25, 0.25, 0.25],
    stackwise_strides=[1, 2, 2, 2, 1, 2],
    stackwise_conv_types=["fused"] * 3 + ["unfused"] * 3,
)

# arch name -> (keras_cv.models backbone class name, its explicit arguments)
ARCHITECTURES = {
    "mobilenetv3_large": ("MobileNetV3Backbone", MOBILENETV3_LARGE_ARGS),
    "efficientnetv2_b2": ("EfficientNetV2Backbone", EFFICIENTNETV2_B2_ARGS),
}


# The keras-cv ImageNet preset of each architecture: what a local --pretrained folder would hold.
IMAGENET_PRESETS = {"mobilenetv3_large": "mobilenet_v3_large_imagenet", "efficientnetv2_b2": "efficientnetv2_b2_imagenet"}


def check_arch(arch: str) -> str:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return arch


def build_backbone(arch: str, input_shape=IMAGE_SHAPE, include_rescaling: bool = True):
    """The backbone, randomly initialised, with no network access.

    `include_rescaling=True` (the starter's preset default) puts a Rescaling(1/255) layer
    first; it is recorded with the weights because the weights depend on it.
    """
    import keras_cv

    class_name, args = ARCHITECTURES[check_arch(arch)]
    backbone_class = getattr(keras_cv.models, class_name)
    return backbone_class(
        **args, include_rescaling=include_rescaling, input_shape=tuple(input_shape)
    )


def load_pretrained_backbone(
    arch: str, preset_dir, input_shape=IMAGE_SHAPE, include_rescaling: bool = True
):
    """The backbone of `arch` with the weights of a local keras-cv preset folder.

    `preset_dir` holds `config.json` + `model.weights.h5`, as written by keras-cv's
    `save_to_preset` or as an attached Kaggle Model (e.g. efficientnetv2_b2_imagenet)
    unpacks. keras-cv reads an existing local path directly; the path is made absolute
    so it can never be mistaken for a preset name, which would be downloaded.
    """
    import keras_cv

    folder = Path(preset_dir).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"pretrained backbone: {folder / 'config.json'} not found (a local keras-cv preset folder)")
    class_name, args = ARCHITECTURES[check_arch(arch)]
    backbone_class = getattr(keras_cv.models, class_name)
    backbone = backbone_class.from_preset(
        str(folder), load_weights=True, input_shape=tuple(input_shape), include_rescaling=include_rescaling
    )
    # The kernel rebuilds `arch` from the registry: a preset of another shape would train
    # weights it cannot load.
    config = json.loads(json.dumps(backbone.get_config()))
    differing = [key for key, value in json.loads(json.dumps(args)).items() if config.get(key) != value]
    if differing:
        raise ValueError(f"pretrained backbone {folder} is not {arch}: its {', '.join(differing)} differ")
    return backbone


def build_model(
    arch: str,
    num_classes: int = len(CLASSES),
    input_shape=IMAGE_SHAPE,
    include_rescaling: bool = True,
    pretrained=None,
):
    """A `keras_cv.models.ImageClassifier` (global average pool + softmax head) on `arch`,
    randomly initialised, or with its backbone from the local preset folder `pretrained`."""
    import keras_cv

    if pretrained is None:
        backbone = build_backbone(arch, input_shape=input_shape, include_rescaling=include_rescaling)
    else:
        backbone = load_pretrained_backbone(arch, pretrained, input_shape, include_rescaling)
    return keras_cv.models.ImageClassifier(
        backbone=backbone, num_classes=num_classes, activation="softmax"
    )
