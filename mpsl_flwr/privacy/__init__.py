"""Label privacy against the server: attacks that measure what MPSL's messages leak.

In the paper's protocol the server receives ``dL_n/dz_n`` for every sample, which for
softmax cross-entropy is the label in disguise (see ``docs/privacy.md``). This package
records exactly what the server receives (:mod:`.recording`, a Grid wrapper), runs label
inference attacks on it (:mod:`.attacks`, no Flower) and reads the true labels for
scoring from the partitions, outside the protocol (:mod:`.truth`), so that the strength
of any defence is a measured figure. ``mpsl-label-attack``
(:mod:`mpsl_flwr.tools.label_attack`) puts them together.

Only the attacks are re-exported here, so importing them does not import Flower.
"""

from mpsl_flwr.privacy.attacks import (
    chance_rate,
    clustering_attack,
    gradient_sign,
    kmeans_clusters,
    known_tail_inversion,
    match_clusters,
    recovery_rate,
)

__all__ = [
    "chance_rate",
    "clustering_attack",
    "gradient_sign",
    "kmeans_clusters",
    "known_tail_inversion",
    "match_clusters",
    "recovery_rate",
]
