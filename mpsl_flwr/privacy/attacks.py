"""Label inference attacks on what an MPSL server receives, and how to score them.

Each attack is a function from arrays the server holds (gradients it received, or
computed from what it received, and its own model) to one predicted label per sample.
None of them sees a label; only the scoring helpers (:func:`recovery_rate`,
:func:`chance_rate`) and the cluster-to-label matching of :func:`clustering_attack`
(an oracle, stated as such) do, to *measure* the leak.

* :func:`gradient_sign`: in the paper's protocol (Fudala et al., arXiv 2502.06355) the
  loss-leg reply is ``dL_n/dz_n = (softmax(z) - onehot(y)) / b_n`` for softmax
  cross-entropy; its only negative entry per row is the label, so the argmin of each
  row recovers it exactly (the observation behind Li et al., "Label Leakage and
  Protection in Two-party Split Learning", ICLR 2022).
* :func:`known_tail_inversion`: for a client-side tail, where the server receives
  ``g = dL/de = W^T (p - y) / b`` at the embedding ``e`` it produced, and knows the
  last averaged classifier ``W`` and bias. ``p = softmax(W e + bias)`` is computable, so
  ``y`` is the one-hot candidate that best explains ``g`` in least squares.
* :func:`clustering_attack`: k-means over the per-sample gradients, clusters matched to
  labels one-to-one on the confusion matrix: the label-free attack of Liu and Lyu,
  "Clustering Label Inference Attack against Practical Split Learning" (2022), scored
  with the best possible matching, i.e. an upper bound of what it recovers.

* :func:`prior_decoding`: against ``label-dp``, the Bayes guess from each inferred
  (noisy) label and its client's label histogram estimated from the noisy labels.

Pure numpy/scipy/scikit-learn (torch tensors are accepted as arrays); no Flower.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

ArrayLike = npt.ArrayLike


def _rows(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as a float64 matrix, one row per sample (trailing axes flattened)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim < 2:
        raise ValueError(
            f"{name} must have one row per sample (2-D or more), got shape {list(arr.shape)}."
        )
    return arr.reshape(arr.shape[0], -1)


def _labels(y: ArrayLike, name: str = "labels") -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per sample), got {list(arr.shape)}.")
    return arr.astype(np.int64)


# ------------------------------------------------------------------ the attacks
def gradient_sign(grad_logits: ArrayLike) -> np.ndarray:
    """The label of each row of ``dL/dz``: the index of its most negative entry.

    For softmax cross-entropy every entry of ``softmax(z) - onehot(y)`` is positive
    except the label's (``p_y - 1 < 0``), whatever the batch scaling ``1 / b_n``, so this
    is exact on the undefended protocol.
    """
    return np.argmin(_rows(grad_logits, "grad_logits"), axis=1)


def known_tail_inversion(
    grad_embedding: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None,
    embedding: ArrayLike,
    batch_size: ArrayLike,
) -> np.ndarray:
    """Labels from ``g = dL/de = W^T (softmax(W e + bias) - onehot(y)) / b``, vectorised.

    Parameters
    ----------
    grad_embedding : (n, d)
        The gradient the server received at the embedding, one row per sample.
    weight : (C, d)
        The classifier the server knows (``nn.Linear.weight``: classes x features).
    bias : (C,) or None
    embedding : (n, d)
        The embedding ``e`` the server produced for those samples.
    batch_size : scalar or (n,)
        ``b`` of the client's mean loss (the server planned it: ``b_n``).

    Returns the class ``c`` minimising ``||g - W^T (p - onehot(c)) / b||`` per row. With
    ``h = g - W^T p / b`` the residual is ``||h||^2 + 2 h.W_c / b + ||W_c||^2 / b^2``, so
    the search over all classes is one matrix product. Exact when ``g`` is noiseless and
    the rows of ``W`` are distinct.
    """
    g = _rows(grad_embedding, "grad_embedding")
    e = _rows(embedding, "embedding")
    W = _rows(weight, "weight")
    if g.shape != e.shape or W.shape[1] != g.shape[1]:
        raise ValueError(
            f"shapes do not match: gradient {list(g.shape)}, embedding {list(e.shape)}, "
            f"weight {list(W.shape)} (expected (n, d), (n, d) and (C, d))."
        )
    logits = e @ W.T
    if bias is not None:
        logits = logits + np.asarray(bias, dtype=np.float64).reshape(1, -1)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    b = np.broadcast_to(np.asarray(batch_size, dtype=np.float64), (g.shape[0],))[:, None]
    h = g - (p @ W) / b
    residual = 2.0 * (h @ W.T) / b + (W**2).sum(axis=1)[None, :] / b**2
    return np.argmin(residual, axis=1)


def kmeans_clusters(
    features: ArrayLike, k: int, seed: int = 0, normalize: bool = True, n_init: int = 10
) -> np.ndarray:
    """Cluster id of every sample: scikit-learn k-means with ``k`` clusters.

    ``normalize`` scales each row to unit L2 norm first, so that gradients of clients
    with different batch sizes (the ``1 / b_n`` factor) or of more and less confident
    samples cluster by direction, which is what carries the label.
    """
    x = _rows(features, "features")
    if x.shape[0] < k:
        raise ValueError(f"{x.shape[0]} samples cannot form {k} clusters: attack more steps.")
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    model = KMeans(n_clusters=k, n_init=n_init, random_state=seed)
    return model.fit_predict(x).astype(np.int64)


def match_clusters(clusters: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """Relabel clusters by the one-to-one cluster-to-class assignment that agrees with the
    most labels (``scipy.optimize.linear_sum_assignment`` on the confusion matrix).

    This uses the true labels, so the result is the best any labelling of these clusters
    can do: an upper bound of the clustering attack (an attacker who knows a few labels,
    or the class priors, gets close to it). Unmatched clusters (more clusters than
    classes) keep the label -1.
    """
    c, y = _labels(clusters, "clusters"), _labels(labels)
    k = int(c.max()) + 1 if c.size else 0
    confusion = np.zeros((k, num_classes), dtype=np.int64)
    np.add.at(confusion, (c, y), 1)
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    mapping = np.full(k, -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping[c]


def clustering_attack(
    features: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    seed: int = 0,
    normalize: bool = True,
) -> np.ndarray:
    """Liu and Lyu's clustering label inference, best-matched: k-means with
    ``k = num_classes`` over per-sample gradients (any layer, flattened), clusters
    mapped to labels by :func:`match_clusters`. ``labels`` serve the matching only."""
    clusters = kmeans_clusters(features, num_classes, seed=seed, normalize=normalize)
    return match_clusters(clusters, labels, num_classes)


def prior_decoding(
    responses: ArrayLike, groups: ArrayLike, keep_probability: float, num_classes: int
) -> np.ndarray:
    """Against randomized response: the Bayes guess from each sample's inferred response
    and its client's label histogram, estimated from those same responses.

    Under RR with keep probability ``p`` (else a uniform other class, ``q = (1-p)/(C-1)``
    each) a client's response histogram is ``h = q + (p - q) pi``, so ``pi`` is estimated
    by ``(h - q) / (p - q)`` (clipped at 0, renormalised), and each sample is guessed as
    ``argmax_y pi_y P(r | y)``. With skewed clients this approaches the bound of
    :meth:`~mpsl_flwr.privacy.label_dp.RandomizedResponse.attack_bound`: label-DP hides
    each label, not a client's label distribution.
    """
    r, g = _labels(responses, "responses"), np.asarray(groups)
    if r.shape != g.shape:
        raise ValueError(f"{r.size} responses for {g.size} group ids.")
    c, p = num_classes, keep_probability
    q = (1.0 - p) / (c - 1)
    guess = np.empty_like(r)
    for group in np.unique(g):
        mine = g == group
        h = np.bincount(r[mine], minlength=c) / mine.sum()
        pi = np.clip((h - q) / (p - q), 0.0, None)
        pi = pi / pi.sum() if pi.sum() > 0 else np.full(c, 1.0 / c)
        likelihood = np.full((c, c), q)  # [true y, response r]
        np.fill_diagonal(likelihood, p)
        best = np.argmax(pi[:, None] * likelihood, axis=0)  # best true label per response
        guess[mine] = best[r[mine]]
    return guess


# ------------------------------------------------------------------ scoring
def recovery_rate(predicted: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of samples whose label the attack got right."""
    p, y = _labels(predicted, "predicted"), _labels(labels)
    if p.shape != y.shape:
        raise ValueError(f"{p.size} predictions for {y.size} labels.")
    return float((p == y).mean()) if y.size else float("nan")


def chance_rate(labels: ArrayLike) -> float:
    """What guessing the majority class of the attacked samples recovers: the bar an
    attack must clear to have learned anything from the gradients."""
    y = _labels(labels)
    return float(np.bincount(y).max() / y.size) if y.size else float("nan")
