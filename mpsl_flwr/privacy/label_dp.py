"""Label differential privacy by randomized response, and what it bounds.

``label-privacy=label-dp``: each client replaces every training label, once per run,
by randomized response (RR; Warner 1965), as in Ghazi et al., "Deep Learning with Label
Differential Privacy" (NeurIPS 2021): keep the label with probability
``p = e^eps / (e^eps + C - 1)``, otherwise draw one of the other ``C - 1`` classes
uniformly. For any two labels ``y, y'`` and output ``r``,
``P(r | y) / P(r | y') <= p / ((1 - p) / (C - 1)) = e^eps``: eps-label-DP for each sample.

Everything the client then sends (loss-leg gradients, heads, statistics) is computed
from the noisy label only, so it is post-processing and keeps the guarantee, however
many epochs reuse it. That is why the draw is fixed per sample per run, from a seed only
the client knows (a fresh draw every epoch would let the server average the noise away).

:func:`attack_bound` is the most any attacker can recover under this mechanism: the
Bayes-optimal guess from the noisy label itself (which the server can at best learn
exactly), for a given prior of the true labels. Under a uniform prior it is ``p``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class RandomizedResponse:
    """eps-label-DP randomized response over ``num_classes`` labels."""

    epsilon: float
    num_classes: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"epsilon must be a finite number > 0, got {self.epsilon}.")
        if self.num_classes < 2:
            raise ValueError(
                f"randomized response needs at least 2 classes, got {self.num_classes}."
            )

    @property
    def keep_probability(self) -> float:
        """``p = e^eps / (e^eps + C - 1)``, in a form that cannot overflow."""
        return 1.0 / (1.0 + (self.num_classes - 1) * math.exp(-self.epsilon))

    def noisy(self, labels: npt.ArrayLike, rng: np.random.Generator) -> np.ndarray:
        """One RR draw per label: kept with probability ``p``, else a uniformly drawn
        *other* class (a shift by 1 .. C-1 modulo C)."""
        y = np.asarray(labels, dtype=np.int64)
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}).")
        keep = rng.random(y.shape) < self.keep_probability
        shift = rng.integers(1, self.num_classes, size=y.shape)
        return np.where(keep, y, (y + shift) % self.num_classes)

    def attack_bound(self, prior: npt.ArrayLike | None = None) -> float:
        """The largest expected fraction of true labels any attacker can name.

        An attacker who learns the noisy label ``r`` exactly and knows the ``prior`` of the
        true labels (None: uniform) does best by guessing ``argmax_y prior_y P(r | y)``,
        which succeeds with probability ``sum_r max_y prior_y P(r | y)``; everything the
        server receives is a function of ``r``, so no attack beats this.
        """
        c = self.num_classes
        pi = np.full(c, 1.0 / c) if prior is None else np.asarray(prior, dtype=np.float64)
        if pi.shape != (c,) or pi.min() < 0 or not math.isclose(pi.sum(), 1.0):
            raise ValueError(f"prior must be {c} probabilities summing to 1.")
        p = self.keep_probability
        q = (1.0 - p) / (c - 1)
        likelihood = np.full((c, c), q)  # [true y, response r]
        np.fill_diagonal(likelihood, p)
        return float((pi[:, None] * likelihood).max(axis=0).sum())


def client_noise_rng(secret: int, cid: int) -> np.random.Generator:
    """The generator of client ``cid``'s draw: from the client's own ``secret`` (never sent),
    so the server cannot redraw the noise and subtract it."""
    return np.random.default_rng(np.random.SeedSequence([secret, cid]))
