"""The random generators of a run: seeded from ``(seed, epoch)`` at the start of every epoch, and recorded.

Seeding every epoch is what makes a resumed run draw the same patches, augmentations and dropout masks as
one that never stopped (whichever checkpoint it resumes from); a checkpoint also records the generators'
states when it was written (:func:`rng_state`), for inspection, not to be restored.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, epoch: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices) from ``(seed, epoch)``."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2)
    random.seed(int(state[0]))
    np.random.seed(int(state[1]))
    torch.manual_seed(int(state[0]) ^ int(state[1]))


def rng_state() -> dict:
    """The random generators' states in a form ``torch.load(weights_only=True)`` accepts."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                  "pos": int(numpy_state["state"]["pos"]), "has_gauss": int(numpy_state["has_gauss"]),
                  "gauss": float(numpy_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
