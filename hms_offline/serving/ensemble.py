"""The fold ensemble at inference: its members (a manifest entry and the engine running it),
combined per sample by their ensemble weights over the members that could predict it.

A member reads one input view (its entry's `input`); one ensemble may mix views. A member
that raises or gives non-probabilities on a batch (after one retry image by image) is
dropped and the rest go on; a sample whose view a member cannot read (its EEG file is
missing, say) is predicted by the members of the other views, renormalised over them.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hms_offline.constants import CLASSES
from hms_offline.models.manifest import ManifestError, ModelEntry, weights_path
from hms_offline.serving.inference_report import DroppedModel, timed

log = logging.getLogger(__name__)


class NoModelError(ManifestError):
    """No model of the ensemble can predict."""


@dataclass
class Member:
    """One model of the ensemble: its manifest entry, the engine running it, its file."""

    entry: ModelEntry
    model: object  # predict_on_batch(images) -> probabilities
    file: str

    @property
    def engine(self) -> str:
        return getattr(self.model, "name", type(self.model).__name__)

    @property
    def view(self) -> str:
        """The name of the input view it was trained on (features/views.py)."""
        return self.entry.input["name"]


def load_members(entries: list[ModelEntry], root: Path, load) -> tuple[list[Member], list[DroppedModel]]:
    """Open every entry with `load(entry, root)`; one that fails is dropped with the reason."""
    members, dropped = [], []
    for entry in entries:
        file = str(weights_path(entry, root))
        try:
            members.append(Member(entry, load(entry, root), file))
        except Exception as error:  # any failure of one model's files costs only that model
            reason = f"cannot be loaded from {file}: {type(error).__name__}: {error}"
            log.error("MODEL DROPPED: %s %s", entry.name, reason)
            dropped.append(DroppedModel(entry.name, file, reason))
            continue
        log.info("loaded %s (%s, fold %s, input %s, weight %.3g) with engine %s", entry.name, entry.arch,
                 entry.fold, entry.input["name"], entry.ensemble_weight, members[-1].engine)
    return members, dropped


def probability_problem(output: np.ndarray, rows: int) -> str | None:
    """Why a model's batch output is not `rows` probability rows, or None."""
    if output.shape != (rows, len(CLASSES)):
        return f"output shape {output.shape}, expected {(rows, len(CLASSES))}"
    if not np.isfinite(output).all():
        return f"non-finite output on {int((~np.isfinite(output).all(axis=1)).sum())} of {rows} images"
    if (output < 0).any() or (output.sum(axis=1) <= 0).any():
        return "output rows that are not probabilities (negative, or summing to 0)"
    return None


class Ensemble:
    """The loaded models, combined by their ensemble weights renormalised over the models
    still in it (and, per sample, over those whose view could be read); a model that fails
    on a batch leaves it, and the batch is predicted by the rest."""

    def __init__(self, members: list[Member], dropped: list[DroppedModel] | None = None):
        self.members = list(members)
        self.dropped = list(dropped or [])
        self.seconds: dict[str, float] = {}
        if not self.members:
            raise NoModelError("no model of the ensemble could be loaded" + self._dropped_listing())
        if sum(member.entry.ensemble_weight for member in self.members) <= 0:
            raise NoModelError("the ensemble weights of the loaded models sum to 0")

    @property
    def names(self) -> list[str]:
        return [member.entry.name for member in self.members]

    @property
    def views(self) -> list[str]:
        """The input views of its members, in member order, each once."""
        return list(dict.fromkeys(member.view for member in self.members))

    @property
    def weights(self) -> np.ndarray:
        raw = np.array([member.entry.ensemble_weight for member in self.members], dtype=np.float64)
        return raw / raw.sum()

    def _dropped_listing(self) -> str:
        return "".join(f"\n  {model.name}: {model.reason}" for model in self.dropped)

    def _run(self, member: Member, images: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        """The member's probabilities on the batch; on an error, one retry image by image."""
        try:
            output = np.asarray(member.model.predict_on_batch(images), dtype=np.float64)
        except Exception as error:  # retried below; a second failure drops the model
            log.error("model %s failed on a batch of %d (%s: %s): retrying image by image",
                      member.entry.name, len(images), type(error).__name__, error)
            try:
                output = np.concatenate([
                    np.asarray(member.model.predict_on_batch(images[i : i + 1]), dtype=np.float64)
                    for i in range(len(images))
                ])
            except Exception as retry_error:
                return None, f"raised on a batch, and again image by image: {type(retry_error).__name__}: {retry_error}"
        return output, probability_problem(output, len(images))

    def predict(self, batch: dict[str, tuple[np.ndarray, np.ndarray]], size: int) -> np.ndarray:
        """`batch[view] = (positions, images)`: the images of that view for those positions of
        a batch of `size` samples. Each position's probabilities are its members' weighted
        mean over the members whose view it has; NaN where none has."""
        total = np.zeros((size, len(CLASSES)))
        weight = np.zeros(size)
        for member in list(self.members):
            if member.view not in batch:
                continue
            positions, images = batch[member.view]
            with timed(self.seconds, member.entry.name):
                output, problem = self._run(member, images)
            if problem:
                self._drop(member, problem)
                continue
            total[positions] += member.entry.ensemble_weight * output
            weight[positions] += member.entry.ensemble_weight
        if not self.members:
            raise NoModelError("every model of the ensemble failed" + self._dropped_listing())
        out = np.full((size, len(CLASSES)), np.nan)
        predicted = weight > 0
        out[predicted] = total[predicted] / weight[predicted, None]
        return out

    def _drop(self, member: Member, reason: str) -> None:
        log.error("MODEL DROPPED: %s (%s): %s; the ensemble goes on without it", member.entry.name, member.file, reason)
        self.members.remove(member)
        self.dropped.append(DroppedModel(member.entry.name, member.file, reason))

    def class_prior(self) -> tuple[np.ndarray, str]:
        """The fallback prediction: the weighted mean of the models' training class priors,
        uniform when one of them does not record its prior (manifests older than it)."""
        priors = [member.entry.class_prior for member in self.members]
        if any(prior is None for prior in priors):
            return np.full(len(CLASSES), 1.0 / len(CLASSES)), "uniform (the manifest records no class prior)"
        prior = np.average(np.array(priors, dtype=np.float64), axis=0, weights=self.weights)
        return prior / prior.sum(), f"class prior of the training rows, weighted over {len(priors)} model(s)"

