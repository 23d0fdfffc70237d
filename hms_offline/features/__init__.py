"""The input views: what a model is shown, computed the same way in training and in the kernel.

`spectrogram.py` is THE Kaggle-spectrogram transform; `views.py` names every view a weights
manifest may record. A new view (the EEG view) is a module beside `spectrogram.py`,
registered in `views.py`.
"""
