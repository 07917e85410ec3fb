"""The slice viewer in a real browser: JupyterLab, Debian's Chromium, Playwright (``make test-browser``).

For notebooks 02 and 06 (the two that end with ``viz.show_viewer``): run every cell in
JupyterLab, then drive each control of the viewer (slice slider by keyboard and by drag, the
slice number box, plane, modality, label toggle, opacity) and prove after each change that

* the picture changed, and
* each panel's picture, screenshotted from the page, equals what ``viz.render_slice`` draws in
  this process for the state its panel heading names in its ``title``, from the same files the
  kernel read (up to a 2 px shift and small colour differences).

In Jupyter Notebook 7, which handles the arrow keys before a slider sees them, the slice number
box must step the slice with the arrow keys. Fails on a page error or an error output.
Screenshots go under ``data/test/browser`` (ignored by git). Deselected from plain
``pytest tests`` by the ``browser`` marker (see pyproject.toml).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from jupyter_browser import CHROMIUM, LabServer, ViewState, decode_png, mismatch, run_all_cells, start_lab

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "data" / "test" / "browser"
#: Largest fraction of a panel's pixels allowed to differ from the package's drawing.
MAX_MISMATCH = 0.005
#: Seconds one change may take to reach the page (measured: 0.1-0.3 s; a busy machine is slower).
CHANGE_TIMEOUT = 15.0
#: True once every picture of the viewer is decoded (a new ``src`` loads asynchronously).
IMAGES_READY_JS = "images => images.length > 0 && images.every(img => img.complete && img.naturalWidth > 0)"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """JupyterLab on a temporary copy of the notebooks, ci profile, temporary HOME and data."""
    server = start_lab(REPO, tmp_path_factory.mktemp("lab"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium under Playwright; its processes are stopped by id afterwards."""
    import psutil
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"{CHROMIUM} missing: apt-get install -y chromium (never `playwright install`)"
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    started: set[int] = set()
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            started = {child.pid for child in me.children(recursive=True)} - before
            try:
                yield chromium
            finally:
                chromium.close()
    finally:
        for pid in started:  # the Playwright driver and Chromium, should any outlive close()
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass


def _notebook(name_prefix: str) -> str:
    matches = sorted(path.name for path in (REPO / "notebooks").glob(f"{name_prefix}_*.ipynb"))
    assert len(matches) == 1, f"notebook {name_prefix}_*.ipynb: found {matches}"
    return matches[0]


def _candidates(data_dir: Path, panels: list[str]) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Every case the viewer may show, as ``{case_id: {panel: (image, label_map)}}``, read from disk.

    ``ground truth`` panels take the case's labels; ``prediction`` panels the prediction files the
    notebook wrote (``runs/<profile>/predictions-*/<case_id>.nii.gz``).
    """
    import nibabel as nib

    from brats_utils.datasets import find_dataset
    from brats_utils.io import load_case

    # the dataset folders (a synthetic set keeps its lock file, .<name>.lock, beside it)
    roots = sorted(p for p in (data_dir / "synthetic").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert roots, f"no synthetic dataset under {data_dir}"
    predictions = {path.name.removesuffix(".nii.gz"): path
                   for path in data_dir.glob("runs/*/predictions-*/*.nii.gz")}
    cases = {}
    for case in find_dataset(roots[0], "training"):
        if "prediction" in panels and case.case_id not in predictions:
            continue
        loaded = load_case(case)
        maps = {"ground truth": loaded.labels}
        if "prediction" in panels:
            maps["prediction"] = np.asanyarray(nib.load(predictions[case.case_id]).dataobj).astype(np.uint8)
        cases[case.case_id] = {panel: (loaded.image, maps[panel]) for panel in panels}
    assert cases, f"no case on disk fits the panels {panels}"
    return cases


def _expected(image: np.ndarray, label_map: np.ndarray, state: ViewState) -> np.ndarray:
    """The package's own drawing of ``state`` (window: the modality's, as the viewer uses)."""
    from brats_utils import viz

    return viz.render_slice(image, label_map, axis=state.plane, index=state.index, modality=state.modality,
                            overlay=state.overlay, alpha=state.alpha)


class ViewerPage:
    """The viewer in the page: its controls, its pictures and their check against the package."""

    def __init__(self, page, name: str, data_dir: Path) -> None:
        self.page, self.name, self.data_dir = page, name, data_dir
        heading = page.locator(".brats-view-state")
        heading.first.wait_for(state="attached", timeout=60_000)
        # the section's viewer: the first one (exercise solutions further down may show their own)
        self.root = page.locator(".jp-OutputArea-output").filter(has=heading).first
        self.headings, self.images = self.root.locator(".brats-view-state"), self.root.locator("img")
        self.root.scroll_into_view_if_needed()
        self.case: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        self.timings: dict[str, float] = {}
        self.worst_mismatch = 0.0
        self.shots: list[np.ndarray] = []

    def states(self) -> list[ViewState]:
        titles = self.headings.evaluate_all("els => els.map(e => e.title)")
        return [ViewState.parse(title) for title in titles]

    def screenshots(self, step: str) -> list[np.ndarray]:
        shots = []
        for number in range(self.images.count()):
            data = self.images.nth(number).screenshot(animations="disabled")
            (ARTIFACTS / f"{self.name}-{step}-{number}.png").write_bytes(data)
            shots.append(decode_png(data))
        return shots

    def _mismatches(self, shots: list[np.ndarray], states: list[ViewState],
                    case: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[float]:
        return [mismatch(shot, _expected(*case[state.panel], state)) for shot, state in zip(shots, states,
                                                                                           strict=True)]

    def check(self, step: str, *, timeout: float = CHANGE_TIMEOUT) -> list[ViewState]:
        """Wait until every panel equals the package's drawing of its state; returns the states."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.images.evaluate_all(IMAGES_READY_JS):
                if time.monotonic() > deadline:
                    pytest.fail(f"{self.name} {step}: the viewer's pictures never loaded")
                self.page.wait_for_timeout(50)
                continue
            states, shots = self.states(), self.screenshots(step)
            assert len(states) == len(shots), f"{len(states)} panel headings for {len(shots)} pictures"
            if self.case is None:  # which case is on screen: the one whose drawing fits the first frame
                cases = _candidates(self.data_dir, [state.panel for state in states])
                scores = {case_id: max(self._mismatches(shots, states, case))
                          for case_id, case in cases.items()}
                best = min(scores, key=scores.get)
                if scores[best] <= MAX_MISMATCH:
                    self.case = cases[best]
                errors = [scores[best]]
            else:
                errors = self._mismatches(shots, states, self.case)
            if max(errors) <= MAX_MISMATCH and self.states() == states:
                self.shots = shots
                self.worst_mismatch = max(self.worst_mismatch, *errors)
                return states
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} {step}: the page's picture differs from viz.render_slice for "
                            f"{states} (mismatch {errors}); screenshots in {ARTIFACTS}")
            self.page.wait_for_timeout(100)

    def change(self, step: str, action: Callable[[], None], expect: Callable[[ViewState, ViewState], bool]
               ) -> ViewState:
        """Do ``action``; wait for a state that ``expect(before, after)`` accepts; check the new picture."""
        before, shots_before = self.states()[0], self.shots
        start = time.monotonic()
        action()
        deadline = start + CHANGE_TIMEOUT
        while not expect(before, after := self.states()[0]):
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} {step}: state stayed {after} (from {before})")
            self.page.wait_for_timeout(20)
        self.check(step)
        self.timings[step] = time.monotonic() - start
        changed = [shot.shape != old.shape or bool(np.any(shot != old))
                   for shot, old in zip(self.shots, shots_before, strict=True)]
        assert any(changed), f"{self.name} {step}: the picture did not change ({before} -> {after})"
        return after

    def slider(self, name: str):
        """The viewer's ``slice`` or ``opacity`` slider (the viewer marks them with CSS classes)."""
        return self.root.locator(f".brats-{name}")

    def x_of(self, locator) -> float:
        return locator.first.bounding_box()["x"]


@pytest.mark.parametrize("prefix", ["02", "06"])
def test_viewer_redraws_every_control_as_the_package_draws_it(prefix: str, lab: LabServer, browser) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = _notebook(prefix)
    page = browser.new_page(viewport={"width": 1600, "height": 1200}, device_scale_factor=1)
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(f"{error}\n{error.stack}"))
    try:
        run_seconds = run_all_cells(page, lab, name)
        viewer = ViewerPage(page, prefix, lab.data_dir)
        start = viewer.check("start", timeout=60)[0]
        index_step = 1 if start.index < start.count - 1 else -1

        handle = viewer.slider("slice").locator(".noUi-handle")
        viewer.change("slider-keyboard", lambda: (handle.focus(), page.keyboard.press(
            "ArrowRight" if index_step > 0 else "ArrowLeft")),
            lambda old, new: new.index == old.index + index_step)

        def drag() -> None:
            box = handle.bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x - 60 * index_step, y, steps=6)
            page.mouse.up()

        viewer.change("slider-drag", drag, lambda old, new: new.index != old.index)

        number_box = viewer.root.locator(".widget-text input[type='number']")
        viewer.change("number-box-keyboard", lambda: (number_box.click(), page.keyboard.press("ArrowUp")),
                      lambda old, new: new.index == old.index + 1)

        viewer.change("plane", lambda: viewer.root.get_by_role("button", name="coronal", exact=True).click(),
                      lambda old, new: new.plane == "coronal")
        viewer.change("modality", lambda: viewer.root.get_by_role("button", name="t1ce", exact=True).click(),
                      lambda old, new: new.modality == "t1ce")

        checkbox = viewer.root.locator("input[type='checkbox']")
        opacity = viewer.slider("opacity")
        viewer.change("labels-off", checkbox.click, lambda old, new: not new.overlay)
        disabled = opacity.locator(".noUi-target").get_attribute("disabled")
        assert disabled is not None, "the opacity slider stays active with the labels off"
        legend_opacity = viewer.root.locator(".brats-legend").evaluate("el => getComputedStyle(el).opacity")
        assert float(legend_opacity) < 1, "legend not greyed out with the labels off"
        viewer.change("labels-on", checkbox.click, lambda old, new: new.overlay)
        assert opacity.locator(".noUi-target").get_attribute("disabled") is None

        opacity_handle = opacity.locator(".noUi-handle")
        viewer.change("opacity", lambda: (opacity_handle.focus(), page.keyboard.press("ArrowRight")),
                      lambda old, new: new.alpha > old.alpha)

        # one label column: the buttons, the slice slider and the labels check box start on one line
        starts = [viewer.x_of(viewer.root.get_by_role("button", name="axial", exact=True)),
                  viewer.x_of(viewer.root.get_by_role("button", name="flair", exact=True)),
                  viewer.x_of(viewer.slider("slice")), viewer.x_of(checkbox)]
        assert max(starts) - min(starts) <= 2, f"controls start at x = {starts}"
        track = viewer.slider("slice").locator(".noUi-target").bounding_box()["width"]
        assert track / (viewer.states()[0].count - 1) >= 6, f"slice track {track:.0f} px"

        page.screenshot(path=str(ARTIFACTS / f"{prefix}-page.png"), full_page=False)
        print(f"\n{name}: cells ran in {run_seconds:.1f} s; seconds per change: "
              + ", ".join(f"{step} {seconds:.2f}" for step, seconds in viewer.timings.items())
              + f"; largest share of differing pixels {viewer.worst_mismatch:.4f}")
        assert not page_errors, f"page errors: {page_errors}"
    finally:
        page.close()


#: A page error thrown by Notebook 7's own code (its first stack frame in Notebook's bundle), e.g.
#: 7.6.5's "reading 'schema'" in its shortcut settings on every load or "Command
#: 'filebrowser:open-path' not registered": reported, but not the viewer's to fail on.
NOTEBOOK7_OWN_ERROR = re.compile(r"[^\n]*\n[^\n]*\n +at [^\n]*/static/notebook/notebook_core\.")
#: A notebook of one viewer on arrays made in the cell (no data set needed).
SMALL_VIEWER_CELL = """import numpy as np
from brats_utils import viz
image = np.zeros((4, 48, 40, 32), np.float32)
image[:, 2:-2, 2:-2, 2:-2] = 100
image[0, 10:20] = 300
labels = np.zeros((48, 40, 32), np.uint8)
labels[10:30, 10:25, 8:20] = 2
labels[14:20, 14:20, 10:16] = 4
viz.show_viewer(image, labels)"""


def test_arrow_keys_step_the_slice_in_notebook7(lab: LabServer, browser) -> None:
    """Notebook 7 takes the arrow keys from a focused slider (they move between cells); the box gets them."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    import nbformat

    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    notebook.cells = [nbformat.v4.new_code_cell(SMALL_VIEWER_CELL), nbformat.v4.new_code_cell("1 + 1")]
    nbformat.write(notebook, lab.notebook_dir / "viewer_keys.ipynb")
    page = browser.new_page(viewport={"width": 1600, "height": 1200}, device_scale_factor=1)
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(f"{error}\n{error.stack}"))
    try:
        run_all_cells(page, lab, "viewer_keys.ipynb", front_end="notebook")
        heading = page.locator(".brats-view-state").first
        heading.wait_for(state="attached", timeout=60_000)

        def index() -> int:
            return ViewState.parse(heading.get_attribute("title")).index

        start = index()
        page.locator(".widget-text input[type='number']").first.click()
        for key, expected in (("ArrowUp", start + 1), ("ArrowUp", start + 2), ("ArrowDown", start + 1)):
            page.keyboard.press(key)
            deadline = time.monotonic() + CHANGE_TIMEOUT
            while index() != expected:
                assert time.monotonic() < deadline, f"Notebook 7: {key} left the slice at {index()}"
                page.wait_for_timeout(20)
        page.screenshot(path=str(ARTIFACTS / "notebook7-keys.png"))
        own = [error.split("\n")[0] for error in page_errors if NOTEBOOK7_OWN_ERROR.match(error)]
        if own:
            print(f"\nNotebook 7's own page errors (not the viewer's): {own}")
        page_errors = [error for error in page_errors if not NOTEBOOK7_OWN_ERROR.match(error)]
        assert not page_errors, f"page errors: {page_errors}"
    finally:
        page.close()
