"""The registries of docs/architecture.md ("Where to add things"): each example there, run as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from brats_utils import augment, datasets, regions
from brats_utils.config import get_profile
from brats_utils.datasets import case_from_folder
from brats_utils.errors import ProfileError
from brats_utils.io import load_case
from brats_utils.labels import BRATS2020
from brats_utils.losses import CombinedLoss
from brats_utils.pipeline import check_registered, metrics_protocol

ARCHITECTURE = Path(__file__).parents[1] / "docs" / "architecture.md"


def doc_example(title: str) -> str:
    """The python block after the paragraph starting ``**<title>**`` in "Where to add things"."""
    section = ARCHITECTURE.read_text().split("## Where to add things", 1)[1].split("\n## ", 1)[0]
    found = re.search(rf"\*\*{re.escape(title)}\*\*.*?```python\n(.*?)```", section, re.S)
    assert found, f"no example for {title!r} in {ARCHITECTURE}"
    return found.group(1)


@pytest.fixture
def registries():
    """Every registry as it was before the test, whatever the example added."""
    saved = {id(r): (r, dict(r)) for r in (datasets.LAYOUTS, regions.LOSSES, augment.AUGMENTATIONS)}
    yield
    for registry, before in saved.values():
        registry.clear()
        registry.update(before)


def test_a_layout_is_one_entry(registries, copy_case, tmp_path):
    exec(doc_example("A dataset layout"), {})
    layout = datasets.LAYOUTS["mysite"]
    source = load_case(case_from_folder(copy_case("BraTS20_Training_001")))
    root = tmp_path / "export"
    layout.write_case(root, "training", layout.case_name(0), source.image, source.labels, source.affine)
    assert sorted(p.name for p in (root / "TrainingData" / "MYSITE_001").iterdir()) == [
        f"MYSITE_001_{part}.nii.gz" for part in ("flair", "seg", "t1", "t1ce", "t2")]
    assert datasets.detect_layout(root).name == "mysite"
    (case,) = datasets.find_dataset(root)
    assert case.case_id == "MYSITE_001" and case.scheme is BRATS2020
    assert np.array_equal(load_case(case).labels, source.labels)
    assert np.array_equal(load_case(case).image, source.image)
    profile = check_registered(get_profile("ci").with_overrides(dataset="mysite"))
    assert metrics_protocol(profile).name == "brats2020"
    with pytest.raises(ProfileError, match="dataset cannot be 'othersite'"):
        check_registered(get_profile("ci").with_overrides(dataset="othersite"))


def test_a_loss_is_one_entry(registries):
    exec(doc_example("A loss"), {})
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 4, 8, 8, 8), torch.randint(0, 4, (2, 8, 8, 8))
    dice_only = regions.loss_for("labels", loss="dice")
    reference = CombinedLoss(ce_weight=0.0, dice_weight=1.0)
    torch.testing.assert_close(dice_only(logits, labels), reference(logits, labels))
    region_loss = regions.loss_for("regions", loss="dice")
    assert (region_loss.bce_weight, region_loss.dice_weight) == (0.0, 1.0)
    assert check_registered(get_profile("ci").with_overrides(loss="dice")).loss == "dice"
    with pytest.raises(ProfileError, match="loss cannot be 'focal'"):
        check_registered(get_profile("ci").with_overrides(loss="focal"))


def test_an_augmentation_is_one_entry(registries):
    exec(doc_example("An augmentation"), {})
    transform = augment.augmentation_for("lr_flip")
    image = np.arange(4 * 3 * 2 * 2, dtype=np.float32).reshape(4, 3, 2, 2)
    seen = set()
    for seed in range(8):
        out, _ = transform(image, None, rng=np.random.default_rng(seed))
        seen.add("flipped" if np.array_equal(out, image[:, ::-1]) else "same" if np.array_equal(out, image)
                 else "other")
    assert seen == {"flipped", "same"}  # x flipped or not, nothing else
    assert augment.tta_flips(transform) == ((), (2,))
    lr_flip = get_profile("ci").with_overrides(augmentation="lr_flip")
    assert check_registered(lr_flip) is lr_flip
    with pytest.raises(ProfileError, match="unknown augmentation 'spin'"):
        augment.augmentation_for("spin")
