"""Synthetic data shaped exactly like the competition's, with a learnable signal
(`python -m hms_offline synth`; `write.write_competition`)."""
