"""Whole-volume inference of the paper's model: ours against MONAI's ``sliding_window_inference``.

Same model, same input, same settings (fp32, overlap 0.5, Gaussian weighting with sigma =
patch / 8, softmax probabilities blended, one window per forward pass, inference mode),
measured side by side in one run. Each measurement runs in a fresh child process so its
peak memory (resident-set high-water mark during the call, see ``compare.peak_memory``) is its own.

The full setting (a 240 x 240 x 155 volume, 128^3 patches: 3 x 3 x 2 = 18 windows) costs
about 10 s per window on a 2-core CPU, so by default every length is scaled by
``BENCH_INFERENCE_SCALE`` (0.375: a 90 x 90 x 58 volume, 48^3 patches), which keeps the
same 18-window layout at 1/19 of the cost; one 128^3 forward pass is
also timed to give the full-size estimate. ``BENCH_INFERENCE_SCALE=1`` runs the full
setting (several minutes; add ``BENCH_INFERENCE_TTA=0`` to skip the 8x test-time flips).
Our pipeline's own speed-up, cropping to the brain first, is measured on the same synthetic
case, and test-time flips on that crop. ``BENCH_INFERENCE_REPEATS`` (default 3) runs of ours
and MONAI alternate and the fastest of each is reported (the network is the same in both, so what
differs is the time outside it; the totals move by a few per cent from run to run on a shared machine).

The project's default CPU prediction, end to end from the loaded case (brain crop and normalisation,
``precision="auto"``: bf16 on a CPU with native bf16, overlap 0.5, ``sw_batch_size`` None: one window
per pass on a CPU), is set against MONAI's default way on the same windows (its defaults: fp32, the
uncropped grid, overlap 0.25, constant blending, one window per pass); the floor is one pass of the
network over the whole crop in the same precision. This comparison runs on the full-size case (a
240 x 240 x 155 volume, 128^3 windows: about 2 minutes; ``BENCH_DEFAULT_SCALE`` scales it like the
rest; ``BENCH_DEFAULT_REPEATS``, default 2). Every method is warmed up on the shapes it then runs
(oneDNN builds its kernels per shape).
Last, one window per pass against two, per window, at the bench's patch, 64^3, 96^3 and 128^3
(``inference.windows_per_pass``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

FULL_SHAPE = (240, 240, 155)
FULL_PATCH = 128


def _scaled() -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Volume shape and patch size at the configured scale (patch a multiple of 4 for the U-Net)."""
    scale = float(os.environ.get("BENCH_INFERENCE_SCALE", "0.375"))
    patch = max(16, int(round(FULL_PATCH * scale / 4)) * 4)
    return tuple(int(round(n * scale)) for n in FULL_SHAPE), (patch,) * 3


def _synthetic_image(shape: tuple[int, int, int]):
    """A z-scored synthetic case (head, brain, tumour) on ``shape``, as the network sees it."""
    import numpy as np

    from brats_utils.preprocess import brain_mask, zscore_in_mask
    from brats_utils.synthetic import synthesize_case

    image, _ = synthesize_case(shape=shape, seed=0)
    return np.ascontiguousarray(zscore_in_mask(image, brain_mask(image)))


def _timed(model):
    """``model`` wrapped so that the seconds spent inside its forward pass add up in ``.seconds``."""
    import torch

    class Timed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.seconds = model, 0.0

        def forward(self, x):
            start = time.perf_counter()
            out = self.inner(x)
            self.seconds += time.perf_counter() - start
            return out

    return Timed().eval()


def _measure(method: str) -> dict:
    """Run one method once (after a warm-up on a small input) and return its time and memory."""
    import numpy as np
    import torch

    from brats_utils.compare import peak_memory
    from brats_utils.inference import sliding_window_predict, windows_per_pass
    from brats_utils.model import build_model

    torch.manual_seed(0)
    model = _timed(build_model("paper").eval())
    shape, patch = _scaled()
    image = _synthetic_image(shape)
    tensor = torch.from_numpy(image)
    with torch.inference_mode():
        model(torch.zeros(1, 4, *patch))  # warm-up: oneDNN primitive creation for this shape

    if method == "monai_default":
        from monai.inferers import sliding_window_inference

        def run():
            with torch.inference_mode():
                return sliding_window_inference(tensor[None], roi_size=patch, sw_batch_size=1,
                                                predictor=lambda x: torch.softmax(model(x), dim=1))[0]
    elif method in ("default", "floor"):
        import torch.nn.functional as F

        from brats_utils.io import LoadedCase
        from brats_utils.precision import autocast
        from brats_utils.preprocess import preprocess_case
        from brats_utils.synthetic import synthesize_case

        raw, _ = synthesize_case(shape=shape, seed=0)
        cropped_shape = preprocess_case(LoadedCase("bench", raw, None, np.eye(4), None), margin=2).image.shape
        with torch.inference_mode(), autocast("auto", "cpu"):  # warm-up in this precision and shape
            if method == "floor":
                model(torch.zeros(1, *cropped_shape[:1], *(n + (-n) % 8 for n in cropped_shape[1:])))
            else:
                model(torch.zeros(windows_per_pass("cpu"), 4, *patch))

        def run():
            cropped = preprocess_case(LoadedCase("bench", raw, None, np.eye(4), None), margin=2)
            run.cropped_shape = cropped.image.shape[1:]
            if method == "default":
                return sliding_window_predict(model, cropped.image, patch_size=patch, overlap=0.5,
                                              precision="auto")
            image = torch.from_numpy(np.asarray(cropped.image, dtype=np.float32))
            pad = [v for n in reversed(image.shape[1:]) for v in (0, (-n) % 8)]
            with torch.inference_mode(), autocast("auto", "cpu"):
                return torch.softmax(model(F.pad(image, pad)[None]).float(), dim=1)[0]
    elif method == "monai":
        from monai.inferers import sliding_window_inference

        def run():
            with torch.inference_mode():
                return sliding_window_inference(
                    tensor[None], roi_size=patch, sw_batch_size=1, overlap=0.5, mode="gaussian",
                    sigma_scale=0.125, predictor=lambda x: torch.softmax(model(x), dim=1))[0]
    elif method.startswith("per_pass"):  # per_pass_<patch>: seconds per window, 1 and 2 windows a pass
        from brats_utils.precision import autocast

        size = int(method.rpartition("_")[2])
        batches = {n: torch.zeros(n, 4, size, size, size) for n in (1, 2)}
        rounds = 2 if size >= 128 else 6
        with torch.inference_mode(), autocast("auto", "cpu"):
            for batch in batches.values():
                model(batch)

        def run():
            best = {1: float("inf"), 2: float("inf")}
            with torch.inference_mode(), autocast("auto", "cpu"):
                for _ in range(rounds):  # alternate, so that drifting load hits both alike
                    for n, batch in batches.items():
                        started = time.perf_counter()
                        model(batch)
                        best[n] = min(best[n], (time.perf_counter() - started) / n)
            run.best = best
    elif method == "window":
        full = torch.zeros(1, 4, FULL_PATCH, FULL_PATCH, FULL_PATCH)
        with torch.inference_mode():
            model(full)

        def run():
            with torch.inference_mode():
                return model(full)
    elif method.startswith("crop"):
        from brats_utils.io import LoadedCase
        from brats_utils.preprocess import preprocess_case
        from brats_utils.synthetic import synthesize_case

        raw, _ = synthesize_case(shape=shape, seed=0)

        def run():
            cropped = preprocess_case(LoadedCase("bench", raw, None, np.eye(4), None), margin=2)
            run.cropped_shape = cropped.image.shape[1:]
            return sliding_window_predict(model, cropped.image, patch_size=patch, overlap=0.5,
                                          sw_batch_size=1, precision="fp32", tta=method == "crop_tta")
    else:
        def run():
            return sliding_window_predict(model, tensor, patch_size=patch, overlap=0.5, mode="gaussian",
                                          sw_batch_size=1, precision="fp32")

    model.seconds = 0.0
    with peak_memory(torch.device("cpu")) as memory:
        start = time.perf_counter()
        output = run()
        seconds = time.perf_counter() - start
    result = {"seconds": seconds, "network": model.seconds, "peak_mib": memory["MiB"]}
    if method in ("ours", "monai"):
        np.save(Path(os.environ["BENCH_OUT"]) / f"{method}.npy", output.numpy())
    if method.startswith("crop") or method in ("default", "floor"):
        result["cropped_shape"] = [int(n) for n in run.cropped_shape]
    if method.startswith("per_pass"):
        result["per_window"] = {str(n): seconds for n, seconds in run.best.items()}
    return result


def _child(method: str, out_dir: Path, scale: str | None = None) -> dict:
    env = {**os.environ, "BENCH_OUT": str(out_dir)}
    if scale is not None:
        env["BENCH_INFERENCE_SCALE"] = scale
    done = subprocess.run([sys.executable, __file__, method], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child {method!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _default_against_monai(out: Path, have_monai: bool) -> None:
    """The project's default CPU prediction and its floor against MONAI's default way, side by side."""
    import torch

    from brats_utils.inference import window_starts, windows_per_pass
    from brats_utils.precision import resolve_precision

    if not have_monai:
        return
    repeats = int(os.environ.get("BENCH_DEFAULT_REPEATS", "2"))
    scale = os.environ.get("BENCH_DEFAULT_SCALE", "1")
    methods = ("default", "floor", "monai_default")
    runs = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:
            runs[m].append(_child(m, out, scale))
    best = {m: min(r["seconds"] for r in rs) for m, rs in runs.items()}
    peak = {m: max(r["peak_mib"] for r in rs) for m, rs in runs.items()}
    precision = resolve_precision("auto", torch.device("cpu"))
    crop = tuple(runs["default"][0]["cropped_shape"])
    shape = tuple(int(round(n * float(scale))) for n in FULL_SHAPE)
    patch = max(16, int(round(FULL_PATCH * float(scale) / 4)) * 4)
    ours_windows = math.prod(len(window_starts(n, patch, 0.5)) for n in crop)
    monai_step = int(patch * (1 - 0.25))  # MONAI's scan interval: int(roi * (1 - overlap))
    monai_windows = math.prod(math.ceil(max(n - patch, 0) / monai_step) + 1 for n in shape)
    print(f"default prediction of a {shape} case: crop {crop}, {ours_windows} windows of {patch}^3, "
          f"precision auto = {precision}, overlap 0.5, {windows_per_pass('cpu')} window(s) per pass; "
          f"MONAI's default: {monai_windows} windows (fp32, uncropped, overlap 0.25, constant, 1 per pass); "
          f"best of {repeats}")
    labels = {"default": "ours, default", "floor": f"floor (1 {precision} pass)",
              "monai_default": "MONAI default"}
    for m in methods:
        print(f"{labels[m]:<22}{best[m]:7.2f} s   peak +{peak[m]:6.0f} MiB   "
              f"{best[m] / best['monai_default']:.3f} of MONAI's time")
    print(f"ours default / MONAI default: {best['default'] / best['monai_default']:.3f} (target <= 0.10; "
          f"floor {best['floor'] / best['monai_default']:.3f})")


def _windows_per_pass(out: Path) -> None:
    """Seconds per window with one window per forward pass and with two, from the bench's patch to 128^3."""
    import torch

    from brats_utils.precision import resolve_precision

    precision = resolve_precision("auto", torch.device("cpu"))
    for size in sorted({_scaled()[1][0], 64, 96, FULL_PATCH}):
        best = _child(f"per_pass_{size}", out)["per_window"]
        print(f"windows per pass, {size}^3 in {precision}: {best['1'] * 1e3:7.0f} ms per window one at a "
              f"time, {best['2'] * 1e3:7.0f} ms two at a time: one / two {best['1'] / best['2']:.2f}")


def main() -> None:
    """Print times, ratios and peak memory of our sliding window and MONAI's on the same volume."""
    import tempfile

    import numpy as np

    try:
        import monai  # noqa: F401

        have_monai = True
    except ImportError:
        have_monai = False
        print("MONAI is not installed (pip install -e '.[bench]'): measuring our inference alone.")
    shape, patch = _scaled()
    print(f"paper model (340,596 parameters), volume {shape}, patch {patch}, fp32, overlap 0.5, gaussian, "
          f"1 window per pass, CPU")
    repeats = int(os.environ.get("BENCH_INFERENCE_REPEATS", "3"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        window = _child("window", out)
        print(f"one {FULL_PATCH}^3 forward pass: {window['seconds']:.1f} s -> full volume "
              f"{FULL_SHAPE} with 18 windows: about {18 * window['seconds']:.0f} s")
        methods = ["ours", "monai"] if have_monai else ["ours"]
        runs = {m: [] for m in methods}
        for _ in range(repeats):  # alternate, so that drifting machine load hits both alike
            for m in methods:
                runs[m].append(_child(m, out))
        best = {m: min(r["seconds"] for r in rs) for m, rs in runs.items()}
        overhead = {m: min(r["seconds"] - r["network"] for r in rs) for m, rs in runs.items()}
        peak = {m: max(r["peak_mib"] for r in rs) for m, rs in runs.items()}
        label = {"ours": "ours", "monai": "MONAI"}
        for m in methods:
            print(f"{label[m]:<17}{best[m]:7.1f} s   peak +{peak[m]:6.0f} MiB   windowing and blending "
                  f"outside the network {overhead[m]:.2f} s   (best of {repeats})")
        if have_monai:
            ours_p, monai_p = np.load(out / "ours.npy"), np.load(out / "monai.npy")
            print(f"MONAI / ours: total time {best['monai'] / best['ours']:.2f}, time outside the network "
                  f"{overhead['monai'] / overhead['ours']:.2f} (> 1: ours faster)")
            print(f"probabilities differ by {np.abs(ours_p - monai_p).mean():.1e} on average (MONAI steps "
                  "windows by int(patch / 2) and clips the last one, ours spreads them evenly; its Gaussian "
                  "is floored at 1e-3)")
        crop = _child("crop", out)
        print(f"ours, brain crop {crop['seconds']:7.1f} s   peak +{crop['peak_mib']:6.0f} MiB   "
              f"(crop {tuple(crop['cropped_shape'])}: {best['ours'] / crop['seconds']:.2f}x faster "
              "than the whole volume)")
        _default_against_monai(out, have_monai)
        if os.environ.get("BENCH_INFERENCE_TTA", "1") != "0":
            tta = _child("crop_tta", out)
            print(f"  + 8-flip TTA   {tta['seconds']:7.1f} s   peak +{tta['peak_mib']:6.0f} MiB   "
                  f"({tta['seconds'] / crop['seconds']:.1f}x the time without TTA)")
        _windows_per_pass(out)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        print(json.dumps(_measure(sys.argv[1])))
    else:
        main()
