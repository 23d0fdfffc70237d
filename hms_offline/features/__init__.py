"""The input views: what a model is shown, computed the same way in training and in the kernel.

`spectrogram.py` is THE Kaggle-spectrogram transform, `eeg.py` THE raw-EEG transform,
`stacked.py` the two as one image; `views.py` names every view a weights manifest may record,
with the recordings (`sources.py`) each reads. A new view is a module beside them, registered
in `views.py`.
"""
