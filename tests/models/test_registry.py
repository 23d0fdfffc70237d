import numpy as np
import pytest

from hms_offline.constants import IMAGE_SHAPE
from hms_offline.models.registry import ARCHITECTURES, build_model, check_arch

from conftest import perturb_head


def trainable_count(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch, total, trainable",
    [
        ("mobilenetv3_large", 3_002_118, 2_977_718),  # the study's model, exactly
        ("efficientnetv2_b2", 8_777_828, 8_695_540),
    ],
)
def test_parameter_counts(arch, total, trainable):
    model = build_model(arch)
    assert model.count_params() == total
    assert trainable_count(model) == trainable
    assert tuple(model.input_shape[1:]) == IMAGE_SHAPE
    assert tuple(model.output_shape) == (None, 6)


def test_unknown_arch_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match="unknown arch 'resnet'.*efficientnetv2_b2, mobilenetv3_large"):
        check_arch("resnet")
    assert set(ARCHITECTURES) == {"mobilenetv3_large", "efficientnetv2_b2"}


@pytest.mark.slow
def test_rescaling_is_part_of_the_saved_config():
    with_rescaling = build_model("mobilenetv3_large", include_rescaling=True)
    without = build_model("mobilenetv3_large", include_rescaling=False)
    assert with_rescaling.backbone.get_config()["include_rescaling"] is True
    assert without.backbone.get_config()["include_rescaling"] is False
    assert with_rescaling.count_params() == without.count_params()


@pytest.mark.slow
def test_save_weights_then_load_gives_identical_predictions(tmp_path):
    model = build_model("mobilenetv3_large")
    perturb_head(model, seed=3)
    images = np.random.default_rng(0).normal(size=(2, *IMAGE_SHAPE)).astype("float32")
    before = model.predict_on_batch(images)
    assert np.ptp(before) > 1e-3  # outputs depend on the input, not a flat 1/6
    path = tmp_path / "m.weights.h5"
    model.save_weights(str(path))
    reloaded = build_model("mobilenetv3_large")
    reloaded.load_weights(str(path))
    np.testing.assert_array_equal(reloaded.predict_on_batch(images), before)
