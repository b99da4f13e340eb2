"""Class-conditional sample grids and an independent classifier to score them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.embedded import load_embedded, split_indices
from ..models.engine_run import EngineRun


@torch.no_grad()
def sample_per_class(
    model: Any,
    num_classes: int,
    per_class: int,
    shape: tuple[int, ...],
    seed: int = 0,
    key: str = "cls",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` samples for each class (class-major order) with CFG; images in [-1, 1]."""
    labels = torch.arange(num_classes).repeat_interleave(per_class).to(model.device)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    with EngineRun(model, model.device, autocast=False) as run:
        c, uc = run.condition({key: labels}, force_uc_zero=[key])
        latents = model.sample(c, uc=uc, batch_size=len(labels), shape=shape, generator=generator)
        images = run.decode(latents).clamp(-1.0, 1.0)
    return images.cpu(), labels.cpu()


@dataclass
class Classifier:
    """A logistic-regression classifier fit on the real images of an embedded dataset."""

    model: Any
    real_accuracy: float

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Share of ``images`` (``(N, 1, H, W)`` in [-1, 1]) classified as ``labels``."""
        features = images.reshape(len(images), -1).float().numpy()
        return float((self.model.predict(features) == labels.numpy()).mean())


def fit_classifier(dataset: str = "digits", val_fraction: float = 0.1) -> Classifier:
    """Fit on the training split; ``real_accuracy`` is measured on the held-out split."""
    from sklearn.linear_model import LogisticRegression

    data = load_embedded(dataset)
    x = data.images.reshape(len(data.images), -1).astype(np.float32) / 127.5 - 1.0
    train, val = split_indices(len(x), val_fraction)
    clf = LogisticRegression(max_iter=3000, C=0.5)
    clf.fit(x[train], data.labels[train])
    real = float((clf.predict(x[val]) == data.labels[val]).mean())
    return Classifier(clf, real)
