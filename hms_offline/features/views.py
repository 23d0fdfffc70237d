"""The input views a model may be trained on, by name: what a weights manifest entry's `input`
names, and what the kernel checks before it runs the model.

An entry records its view as `{"name": ..., "params": {...}}`; the kernel refuses an entry
whose view this code does not implement, or whose parameters differ from the implementation's
(hms_offline.models.manifest). Today one view exists, the KerasCV starter's transform of the
Kaggle spectrogram; the EEG view is added here, beside it, with its own module.
"""

from hms_offline.features import spectrogram

# View name -> the parameters of its implementation.
INPUT_VIEWS = {spectrogram.VIEW_NAME: spectrogram.VIEW_PARAMS}
DEFAULT_VIEW = spectrogram.VIEW_NAME  # what training records unless told another


def view_record(name: str = DEFAULT_VIEW) -> dict:
    """A view as a manifest entry's `input`: its name and a copy of its parameters."""
    return {"name": name, "params": dict(INPUT_VIEWS[name])}
