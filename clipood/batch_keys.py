"""The names of batch keys, defined once: what an adapter's batch carries, what a training batch of crops
carries, and how the evaluation's feature cache maps onto an adapter batch.

An **adapter batch** (``Adapter.forward``) holds :data:`IMAGE` always and the others when asked
(``Adapter.requires`` names them: :data:`ADAPTER_KEYS`). A **training batch** (`clipood.training.loop`) holds
the Q ID and Q negative crops of each image: ``id_<suffix>`` / ``neg_<suffix>`` for the suffix of each adapter
key (:data:`TRAIN_SUFFIX`, :func:`train_key`) and :data:`ID_LABELS`.
"""
from __future__ import annotations

__all__ = ["IMAGE", "LOCAL", "CONDITION", "PRE_PROJECTION", "ADAPTER_KEYS", "TRAIN_SUFFIX", "ID_LABELS",
           "FROM_FEATURE_CACHE", "train_key"]

IMAGE = "image_features"  #: B×D image features in the joint space
LOCAL = "local_features"  #: B×T×D patch features (LoCoOp, GL-MCM)
CONDITION = "condition_features"  #: B×D features the meta-nets see instead of the image feature
PRE_PROJECTION = "pre_projection_features"  #: B×F features before the image tower's final projection

#: every key an adapter may name in ``requires``
ADAPTER_KEYS = (IMAGE, LOCAL, CONDITION, PRE_PROJECTION)

#: adapter key → suffix of its training-batch tensors (``id_features``, ``neg_condition``, ``id_local``, ...)
TRAIN_SUFFIX = {IMAGE: "features", CONDITION: "condition", LOCAL: "local"}

#: the ID crops' class indices in a training batch
ID_LABELS = "id_labels"

#: evaluation feature-cache name → adapter key (`clipood.evaluation.protocol.feature_batches`)
FROM_FEATURE_CACHE = {"features": IMAGE, "local": LOCAL}


def train_key(prefix: str, key: str = IMAGE) -> str:
    """The training-batch key of adapter key ``key`` for the ``id`` or ``neg`` crops: ``train_key('neg')`` is
    ``neg_features``."""
    if prefix not in ("id", "neg"):
        raise ValueError(f"training-batch prefix must be 'id' or 'neg', got {prefix!r}")
    return f"{prefix}_{TRAIN_SUFFIX[key]}"
