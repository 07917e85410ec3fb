"""Stronger augmentation: which library, measured side by side on a 4 x 128^3 float32 patch.

Candidates, each doing rotation, scaling, elastic deformation, gamma, per-channel
contrast/brightness and Gaussian noise, every transform firing (p = 1) so they do the
same work:

- ``torch grid_sample`` (:class:`brats_utils.augment.StrongAugmentation`): rotation,
  scaling and elastic field composed into one grid, one resampling; numpy intensity.
- ``scipy.ndimage``: the same grid and intensity, resampled with ``map_coordinates``.
- ``TorchIO``: ``RandomAffine`` + ``RandomElasticDeformation`` (SimpleITK resamplers),
  ``RandomGamma``, ``RandomNoise``, and a ``Lambda`` for per-channel contrast/brightness
  (TorchIO has none). On a ``Subject`` of ``ScalarImage [C, X, Y, Z]`` + ``LabelMap``.
- ``albumentations 2.0.8``: ``Affine``, ``ElasticTransform``, ``RandomGamma``,
  ``RandomBrightnessContrast``, ``GaussNoise``, each seeded on its own. The patch goes in
  as ``images`` ``[Z, X, Y, C]`` and ``masks`` ``[Z, X, Y]`` (two transposes): with only
  ``volume=`` the intensity transforms raise ``KeyError: 'images'`` in 2.0.8, and with the
  z slices as channels (what ``data.augment_patch`` does) OpenCV 5 refuses depth > 128.
  Its spatial transforms are 2D, so the rotation is about z only and the elastic field
  has no z component.

A second table: the paper's flips and rot90, numpy (:class:`brats_utils.augment.Dihedral`)
against albumentations with the z slices as channels (today's ``data.augment_patch``),
at depth 128 and 155 (a whole cropped volume's depth: OpenCV 5 refuses more than 128
channels), and the default-probability strong pipeline, the rate a loader worker sees.

Printed: patches per second (median of interleaved rounds, one torch thread as in a
loader worker), and correctness on the ``[C, X, Y, Z]`` layout over a few seeds: labels
still in {0..3} and uint8, image finite, overlap (Dice) of a labelled block with the
thresholded image channel that equals it, and whether anything moves through the plane
(a label's set of z slices changes). TorchIO is optional (``pip install torchio``): the
row says so when it is missing.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import scipy.ndimage as ndi
import torch

from brats_utils.augment import IN_PLANE, MIRROR_ALL, StrongAugmentation, sampling_grid

SHAPE = (128, 128, 128)
ROUNDS = 3
PER_ROUND = 1
ROTATION = (10.0, 10.0, 15.0)  # degrees about x, y, z
SCALE = (0.9, 1.1)
GAMMA = (0.7, 1.5)
MULT, ADD, NOISE = (0.9, 1.1), (-0.1, 0.1), (0.0, 0.1)
ELASTIC = 4.0  # voxels


def make_patch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A brain-like patch: z-scored noise in an ellipsoid (0 outside); a labelled block is 5 in channel 0."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    brain = (grid[0] / 0.95) ** 2 + (grid[1] / 0.9) ** 2 + (grid[2] / 0.85) ** 2 < 1
    image = (rng.normal(size=(4, *SHAPE)) * brain).astype(np.float32)
    labels = np.zeros(SHAPE, np.uint8)
    block = (slice(30, 60), slice(50, 90), slice(70, 100))  # off-centre, not a cube: rotations show
    image[0] = 0
    image[(0, *block)] = 5.0
    labels[block] = 2
    return image, labels


# --- candidates: (image [C,X,Y,Z] float32, labels [X,Y,Z] uint8, seed) -> same ----------

OURS = StrongAugmentation(
    dihedral=None, p_rotation=1, rotation_degrees=ROTATION, p_scale=1, scale=SCALE, p_elastic=1,
    elastic_displacement=ELASTIC, p_gamma=1, gamma=GAMMA, p_brightness_contrast=1, multiplicative=MULT,
    additive=ADD, p_noise=1, noise_std=NOISE)


def torch_candidate(image, labels, seed):
    return OURS(image, labels, rng=np.random.default_rng(seed))


def scipy_candidate(image, labels, seed):
    rng = np.random.default_rng(seed)
    matrix, displacements = OURS.draw_spatial(rng, image.shape[1:])
    coords = sampling_grid(image.shape[1:], matrix, displacements)
    out = np.stack([ndi.map_coordinates(channel, coords, order=1, mode="constant", cval=0.0)
                    for channel in image])
    out_labels = ndi.map_coordinates(labels, coords, order=0, mode="constant", cval=0)
    return OURS.intensity(out, rng=rng), out_labels


def make_torchio_candidate():
    try:
        import torchio as tio
    except ImportError:
        return None

    def contrast_brightness(tensor: torch.Tensor) -> torch.Tensor:
        factor = torch.empty(tensor.shape[0], 1, 1, 1).uniform_(*MULT)
        offset = torch.empty(tensor.shape[0], 1, 1, 1).uniform_(*ADD)
        return tensor * factor + offset

    pipeline = tio.Compose([
        tio.RandomAffine(scales=SCALE, degrees=ROTATION, image_interpolation="linear",
                         label_interpolation="nearest", default_pad_value=0),
        tio.RandomElasticDeformation(num_control_points=7, max_displacement=ELASTIC,
                                     image_interpolation="linear", label_interpolation="nearest"),
        tio.RandomGamma(log_gamma=tuple(np.log(GAMMA))),
        tio.Lambda(contrast_brightness, types_to_apply=[tio.INTENSITY]),
        tio.RandomNoise(std=NOISE),
    ])

    def candidate(image, labels, seed):
        with torch.random.fork_rng():  # TorchIO draws from torch's global generator
            torch.manual_seed(seed)
            subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(image)),
                                  labels=tio.LabelMap(tensor=torch.from_numpy(labels[None])))
            out = pipeline(subject)
        # its LabelMap comes back as float32 (values intact): cast as a wrapper would
        return out["image"].data.numpy(), out["labels"].data[0].numpy().astype(np.uint8)

    return candidate


def make_albumentations_candidate():
    import albumentations as A
    import cv2

    pipeline = A.Compose([
        A.Affine(rotate=(-ROTATION[2], ROTATION[2]), scale=SCALE, interpolation=cv2.INTER_LINEAR,
                 mask_interpolation=cv2.INTER_NEAREST, fill=0, fill_mask=0, p=1),
        A.ElasticTransform(alpha=ELASTIC * 10, sigma=10, interpolation=cv2.INTER_LINEAR,
                           mask_interpolation=cv2.INTER_NEAREST, p=1),
        A.RandomGamma(gamma_limit=(GAMMA[0] * 100, GAMMA[1] * 100), p=1),
        A.RandomBrightnessContrast(brightness_limit=ADD, contrast_limit=(MULT[0] - 1, MULT[1] - 1), p=1),
        A.GaussNoise(std_range=NOISE, p=1),
    ])

    def candidate(image, labels, seed):
        rng = np.random.default_rng(seed)
        pipeline.set_random_seed(int(rng.integers(2**32)))
        for transform in pipeline.transforms:  # Compose would give them all one seed
            transform.set_random_seed(int(rng.integers(2**32)))
        with np.errstate(invalid="ignore"):  # its gamma: NaN for negative z-scores (counted by check)
            out = pipeline(images=np.ascontiguousarray(image.transpose(3, 1, 2, 0)),
                           masks=np.ascontiguousarray(labels.transpose(2, 0, 1)))
        return (np.ascontiguousarray(np.asarray(out["images"]).transpose(3, 1, 2, 0)),
                np.ascontiguousarray(np.asarray(out["masks"]).transpose(1, 2, 0)))

    return candidate


# --- measurement ---------------------------------------------------------------------


def check(candidate, seeds=range(2)) -> dict:
    """Correctness of ``candidate`` on the layout, over a few seeds (see the module docstring)."""
    image, labels = make_patch()
    z_slices = set(np.flatnonzero((labels == 2).any(axis=(0, 1))))
    result = {"labels ok": True, "finite": True, "range kept": True, "dice": [], "through-plane": False}
    for seed in seeds:
        out, out_labels = candidate(image, labels, seed)
        out_labels = np.asarray(out_labels)
        result["labels ok"] &= (out.shape == image.shape and out_labels.shape == labels.shape
                                and out_labels.dtype == np.uint8
                                and set(np.unique(out_labels)) <= {0, 1, 2, 3})
        result["finite"] &= bool(np.isfinite(out).all())
        result["range kept"] &= bool(np.nanmin(out) < -1 and np.nanmax(out) > 2)  # z-scores not clipped
        a, b = np.nan_to_num(out[0]) > 2.5, out_labels == 2
        result["dice"].append(2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1))
        result["through-plane"] |= set(np.flatnonzero(b.any(axis=(0, 1)))) != z_slices
    result["dice"] = min(result["dice"])
    return result


def albumentations_flips():
    """Today's path: HorizontalFlip, VerticalFlip, RandomRotate90 on ``images=``/``mask=``, z as channels."""
    import albumentations as A

    pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)])

    def candidate(image, labels, seed):
        rng = np.random.default_rng(seed)
        for transform in pipeline.transforms:
            transform.set_random_seed(int(rng.integers(2**32)))
        out = pipeline(images=image, mask=labels)
        return np.ascontiguousarray(out["images"]), np.ascontiguousarray(out["mask"])

    return candidate


def _rate(candidate, image, labels, count: int) -> float:
    candidate(image, labels, 0)
    start = time.perf_counter()
    for i in range(count):
        candidate(image, labels, i + 1)
    return count / (time.perf_counter() - start)


def _flips_table() -> None:
    import cv2

    default = StrongAugmentation()  # IN_PLANE flips + the default probabilities
    def seeded(transform):
        return lambda image, labels, seed: transform(image, labels, rng=np.random.default_rng(seed))

    rows = {"numpy Dihedral IN_PLANE": seeded(IN_PLANE), "numpy Dihedral MIRROR_ALL": seeded(MIRROR_ALL),
            f"albumentations flips, OpenCV {cv2.__version__}": albumentations_flips(),
            "StrongAugmentation() defaults": seeded(default)}
    print(f"\n{'flips/rot90 (and the default strong pipeline)':<46}{'depth 128':>12}{'depth 155':>12}"
          "  patches/s")
    for name, candidate in rows.items():
        cells = []
        for depth in (128, 155):
            image = np.random.default_rng(0).normal(size=(4, 128, 128, depth)).astype(np.float32)
            labels = (image[0] > 1).astype(np.uint8)
            try:
                cells.append(f"{_rate(candidate, image, labels, 4 if 'Strong' in name else 10):>12.1f}")
            except Exception as error:  # noqa: BLE001 - what fails is the result
                cells.append(f"{'fails':>12}")
                message = " ".join(str(error).split())
                failure = f"{type(error).__name__}: {message[message.find('(-'):][:70]}"
        print(f"{name:<46}{''.join(cells)}" + (f"  ({failure})" if "fails" in "".join(cells) else ""))


def main() -> None:
    """Print patches per second and the correctness checks of every candidate, side by side."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _measure()
        _flips_table()
    finally:
        torch.set_num_threads(threads)  # the benchmarks after this one keep the machine's setting


def _measure() -> None:
    candidates = {"torch grid_sample (augment.py)": torch_candidate,
                  "scipy.ndimage map_coordinates": scipy_candidate,
                  "TorchIO (SimpleITK)": make_torchio_candidate(),
                  "albumentations 2.0.8 (2D per slice)": make_albumentations_candidate()}
    image, labels = make_patch()
    times: dict[str, list[float]] = {name: [] for name, c in candidates.items() if c is not None}
    checks = {name: check(candidates[name]) for name in times}  # also the warm-up (imports, first calls)
    for round_ in range(ROUNDS):
        for name in times:
            start = time.perf_counter()
            for i in range(PER_ROUND):
                candidates[name](image, labels, 1000 * round_ + i)
            times[name].append(PER_ROUND / (time.perf_counter() - start))
    reference = statistics.median(times["torch grid_sample (augment.py)"])
    print(f"4 x {'x'.join(map(str, SHAPE))} float32 patch, all transforms firing, 1 torch thread")
    print(f"{'candidate':<38}{'patches/s':>10}{'vs torch':>9}{'labels ok':>10}{'finite':>7}"
          f"{'z kept':>7}{'min Dice':>9}{'3D':>4}")
    for name, candidate in candidates.items():
        if candidate is None:
            print(f"{name:<38}{'not installed (pip install torchio)':>40}")
            continue
        rate, c = statistics.median(times[name]), checks[name]
        print(f"{name:<38}{rate:>10.2f}{rate / reference:>8.2f}x{str(c['labels ok']):>10}"
              f"{str(c['finite']):>7}{str(c['range kept']):>7}{c['dice']:>9.3f}"
              f"{'yes' if c['through-plane'] else 'no':>4}")


if __name__ == "__main__":
    main()
