"""The PyTorch example's data glue, in numpy only: the digits' 64 features as 1×8×8 images.

Kept apart from ``cnn.py`` so that it (and ``run.py``) import and are tested without PyTorch.
"""

from __future__ import annotations

import numpy as np

SIDE = 8


def as_images(x: np.ndarray) -> np.ndarray:
    """(N, 64) features in [0, 1] → (N, 1, 8, 8) float32, the NCHW layout of ``torch.nn.Conv2d``."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != SIDE * SIDE:
        raise ValueError(f"expected (N, {SIDE * SIDE}) features, got {x.shape}")
    return np.ascontiguousarray(x.reshape(len(x), 1, SIDE, SIDE))
