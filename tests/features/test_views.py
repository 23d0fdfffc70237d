"""hms_offline.features.views: the input views by name, as weights manifests record them."""

from hms_offline.features import spectrogram
from hms_offline.features.views import DEFAULT_VIEW, INPUT_VIEWS, view_record
from hms_offline.models.manifest import ModelEntry


def test_the_one_view_today_is_the_starters_spectrogram_transform():
    assert INPUT_VIEWS == {"starter_log_standardize": spectrogram.VIEW_PARAMS} and DEFAULT_VIEW == spectrogram.VIEW_NAME
    assert spectrogram.VIEW_PARAMS == {"window_columns": 300, "offset_divisor_seconds": 2, "clip_min_exponent": -4.0,
                                       "clip_max_exponent": 8.0, "epsilon": 1e-06, "channels": 3}


def test_a_record_is_a_copy_and_the_default_of_every_manifest_entry():
    record = view_record()
    record["params"]["channels"] = 1
    assert INPUT_VIEWS[DEFAULT_VIEW]["channels"] == 3
    entry = ModelEntry(name="m", arch="mobilenetv3_large", fold=0, file="m.weights.h5", sha256="0")
    assert entry.input == view_record() == {"name": DEFAULT_VIEW, "params": spectrogram.VIEW_PARAMS}
