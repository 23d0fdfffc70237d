"""Every fact about the competition's data in one place.

Training, conversion, inference and the synthetic data generator all import these names;
nothing else in the package spells a class, a column or a window size.
"""

from decimal import ROUND_HALF_UP, Decimal

CLASSES = ("seizure", "lpd", "gpd", "lrda", "grda", "other")
VOTE_COLUMNS = tuple(f"{name}_vote" for name in CLASSES)
# `expert_consensus` in train.csv spells the classes this way.
CONSENSUS_NAMES = ("Seizure", "LPD", "GPD", "LRDA", "GRDA", "Other")
ID_COLUMN = "eeg_id"

# Column layout of the competition's CSVs.
TRAIN_COLUMNS = (
    ID_COLUMN,
    "eeg_sub_id",
    "eeg_label_offset_seconds",
    "spectrogram_id",
    "spectrogram_sub_id",
    "spectrogram_label_offset_seconds",
    "label_id",
    "patient_id",
    "expert_consensus",
    *VOTE_COLUMNS,
)
TEST_COLUMNS = ("spectrogram_id", ID_COLUMN, "patient_id")
SUBMISSION_COLUMNS = (ID_COLUMN, *VOTE_COLUMNS)

EEG_CHANNELS = (
    "Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1", "Fz", "Cz",
    "Pz", "Fp2", "F4", "C4", "P4", "F8", "T4", "T6", "O2", "EKG",
)
EEG_SAMPLE_RATE_HZ = 200
EEG_WINDOW_SECONDS = 50  # an expert labels a 50 s EEG window; a test EEG file is one
EEG_WINDOW_SAMPLES = EEG_SAMPLE_RATE_HZ * EEG_WINDOW_SECONDS  # 10,000

# The "double banana" bipolar montage: one chain of 4 electrode pairs (a - b) per
# spectrogram region, in SPECTROGRAM_REGIONS order (LL, RL, LP, RP), front to back.
BIPOLAR_CHAINS = (
    (("Fp1", "F7"), ("F7", "T3"), ("T3", "T5"), ("T5", "O1")),  # LL: left temporal
    (("Fp2", "F8"), ("F8", "T4"), ("T4", "T6"), ("T6", "O2")),  # RL: right temporal
    (("Fp1", "F3"), ("F3", "C3"), ("C3", "P3"), ("P3", "O1")),  # LP: left parasagittal
    (("Fp2", "F4"), ("F4", "C4"), ("C4", "P4"), ("P4", "O2")),  # RP: right parasagittal
)

SPECTROGRAM_REGIONS = ("LL", "RL", "LP", "RP")
SPECTROGRAM_TIME_COLUMN = "time"
SPECTROGRAM_STEP_SECONDS = 2
N_FREQUENCIES = 100
# Kaggle's frequencies are those of an FFT of length 1024 at 200 Hz, whose bin k is
# k * 200/1024 = k * 25/128 Hz: the spectrogram's 100 are its bins 3 ... 102.
FREQUENCY_FFT_LENGTH = 1024
FREQUENCY_FIRST_BIN = 3


def _frequency_label(bin_index: int) -> str:
    """Kaggle's column label for one frequency bin: (bin + 3) * 25/128 Hz, rounded half-up."""
    step = Decimal(EEG_SAMPLE_RATE_HZ) / Decimal(FREQUENCY_FFT_LENGTH)
    value = (Decimal(bin_index + FREQUENCY_FIRST_BIN) * step).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_UP
    )
    return format(value.normalize(), "f")


FREQUENCY_LABELS = tuple(_frequency_label(i) for i in range(N_FREQUENCIES))
# The 400 value columns of a spectrogram parquet, in file order (after `time`).
SPECTROGRAM_COLUMNS = tuple(
    f"{region}_{freq}" for region in SPECTROGRAM_REGIONS for freq in FREQUENCY_LABELS
)

WINDOW_COLUMNS = 300  # 300 spectrogram columns = 10 minutes at 2 s per column
IMAGE_HEIGHT = len(SPECTROGRAM_COLUMNS)  # 400
IMAGE_WIDTH = WINDOW_COLUMNS
IMAGE_CHANNELS = 3
IMAGE_SHAPE = (IMAGE_HEIGHT, IMAGE_WIDTH, IMAGE_CHANNELS)

# The starter's clip range before the log.
LOG_CLIP_MIN_EXPONENT = -4.0
LOG_CLIP_MAX_EXPONENT = 8.0
STANDARDIZE_EPSILON = 1e-6
