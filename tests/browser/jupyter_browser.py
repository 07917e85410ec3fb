"""Helpers of the browser test: a JupyterLab server of our own, a notebook run in it, pictures compared.

Nothing here imports Playwright at module load, so plain ``pytest tests`` can collect this
folder (and deselect its tests) without the ``browser`` extra installed.

The server runs on ``127.0.0.1`` with the ``ci`` profile, a temporary ``HOME``, data folder,
figures folder and JupyterLab settings, on a temporary copy of the notebooks (JupyterLab
autosaves what it opens). It exposes the application object in the page
(``window.jupyterapp``), so the test runs cells through JupyterLab's own commands instead of
clicking menus.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Debian's Chromium (apt package ``chromium``); Playwright's own browser download is never used.
CHROMIUM = Path(os.environ.get("BRATS_CHROMIUM", "/usr/bin/chromium"))
#: A viewer panel heading's title, e.g.
#: ``"ground truth: axial slice 17 of 32 (index 16), flair, labels on, opacity 0.40"``.
STATE_PATTERN = re.compile(
    r"^(?P<panel>[\w ]+): (?P<plane>sagittal|coronal|axial) slice (?P<number>\d+) of (?P<count>\d+) "
    r"\(index (?P<index>\d+)\), (?P<modality>\w+), "
    r"(?:labels on, opacity (?P<alpha>[0-9.]+)|labels off)$")
#: JupyterLab settings for a test: every cell rendered (no windowing), no news or update pop-ups.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
}


@dataclass
class ViewState:
    """What a viewer panel shows, parsed from its heading's title."""

    panel: str
    plane: str
    index: int
    count: int
    modality: str
    overlay: bool
    alpha: float

    @classmethod
    def parse(cls, text: str) -> ViewState:
        """Parse a heading's title; ``ValueError`` when it is not the viewer's state text."""
        match = STATE_PATTERN.match(text or "")
        if match is None:
            raise ValueError(f"not a viewer state: {text!r}")
        if int(match["number"]) != int(match["index"]) + 1:
            raise ValueError(f"slice number and index disagree: {text!r}")
        return cls(panel=match["panel"], plane=match["plane"], index=int(match["index"]),
                   count=int(match["count"]), modality=match["modality"], overlay=match["alpha"] is not None,
                   alpha=float(match["alpha"] or 0.0))


@dataclass
class LabServer:
    """A running JupyterLab server started by :func:`start_lab`; stop it with :meth:`stop`."""

    process: subprocess.Popen
    url: str
    token: str
    notebook_dir: Path
    data_dir: Path
    log_path: Path
    child_pids: set[int] = field(default_factory=set)

    def page_url(self, notebook: str, front_end: str = "lab") -> str:
        """Address that opens ``notebook`` (a name in the notebook folder) in JupyterLab or Notebook 7.

        JupyterLab gets ``reset``: otherwise it restores the workspace of the previous test, with that
        notebook open (and current) beside this one.
        """
        path = {"lab": "lab/tree", "notebook": "notebooks"}[front_end]
        reset = "reset&" if front_end == "lab" else ""
        return f"{self.url}{path}/{notebook}?{reset}token={self.token}"

    def api(self, path: str, method: str = "GET") -> object:
        """Call the server's REST API; returns the decoded JSON (``None`` for an empty reply)."""
        request = urllib.request.Request(f"{self.url}api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            body = reply.read()
        return json.loads(body) if body else None

    def remember_children(self) -> None:
        """Record the pids of the server's kernels (and their children), to stop them by id."""
        import psutil

        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
            self.child_pids |= {child.pid for child in children}
        except psutil.NoSuchProcess:
            pass

    def stop(self, timeout: float = 15.0) -> None:
        """Shut the kernels down, then the server, each by its own process id (killed if it hangs)."""
        if self.process.poll() is None:
            self.remember_children()
            try:
                for kernel in self.api("kernels") or []:
                    self.api(f"kernels/{kernel['id']}", method="DELETE")
            except OSError:
                pass
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        for pid in sorted(self.child_pids):
            _stop_pid(pid)


def _stop_pid(pid: int) -> None:
    """Terminate one process by id if it is still alive (and kill it if SIGTERM is not enough)."""
    import psutil

    try:
        process = psutil.Process(pid)
        process.terminate()
        process.wait(5)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        process.kill()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_lab(repo: Path, scratch: Path, *, timeout: float = 120.0) -> LabServer:
    """Start JupyterLab on a copy of ``repo/notebooks`` under ``scratch``; returns once it answers.

    Environment of the server and its kernels: ``BRATS_PROFILE=ci``, a fresh ``BRATS_DATA_DIR``
    and ``BRATS_FIGURES_DIR`` under ``scratch``, ``HOME`` under ``scratch`` (so no user
    settings, caches or workspaces leak in or out) and JupyterLab settings from
    :data:`LAB_SETTINGS`.
    """
    notebook_dir = scratch / "notebooks"
    shutil.copytree(repo / "notebooks", notebook_dir, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    home, data_dir, settings = scratch / "home", scratch / "data", scratch / "lab-settings"
    for folder in (home, data_dir, settings, scratch / "workspaces"):
        folder.mkdir(parents=True, exist_ok=True)
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("JUPYTER", "BRATS_"))}
    env.update(
        HOME=str(home), BRATS_PROFILE="ci", BRATS_DATA_DIR=str(data_dir),
        BRATS_FIGURES_DIR=str(scratch / "figures"), JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(scratch / "workspaces"), NO_ALBUMENTATIONS_UPDATE="1",
        MPLBACKEND="module://matplotlib_inline.backend_inline", PYTHONPATH=str(repo),
    )
    port, token = _free_port(), os.urandom(16).hex()
    log_path = scratch / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebook_dir}",
               "--LabApp.expose_app_in_browser=True", "--JupyterNotebookApp.expose_app_in_browser=True",
               "--LabApp.news_url=",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:  # CI containers run as root
        command.append("--allow-root")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, cwd=notebook_dir, stdout=log, stderr=subprocess.STDOUT)
    server = LabServer(process, f"http://127.0.0.1:{port}/", token, notebook_dir, data_dir, log_path)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {process.returncode}:\n"
                               f"{log_path.read_text()[-3000:]}")
        try:
            server.api("status")
            return server
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise TimeoutError(f"JupyterLab did not answer in {timeout:.0f} s:\n"
                                   f"{log_path.read_text()[-3000:]}") from None
            time.sleep(0.5)


# --- running a notebook in the page ------------------------------------------------------

#: The open notebook's panel and whether its kernel is connected and idle.
_KERNEL_READY_JS = """() => {
  const app = window.jupyterapp;
  const panel = app && app.shell.currentWidget;
  if (!panel || !panel.sessionContext || !panel.context || !panel.context.isReady) return false;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""

#: Progress of a run: executed code cells, their count, error outputs and the kernel status.
_PROGRESS_JS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = panel.content.widgets.filter(cell => cell.model.type === 'code');
  const errors = [];
  for (const cell of cells) {
    for (const output of cell.model.outputs.toJSON()) {
      if (output.output_type === 'error') errors.push(`${output.ename}: ${output.evalue}`);
    }
  }
  return {executed: cells.filter(cell => cell.model.executionCount !== null).length, total: cells.length,
          errors, status: panel.sessionContext.session.kernel.status,
          pending: cells.filter(cell => cell.promptNode && cell.promptNode.textContent.includes('*')).length};
}"""


#: Seconds after which a "Run All" that queued no cell is sent again, and how many times at most.
RUN_ALL_RETRY_S, RUN_ALL_ATTEMPTS = 20.0, 3


def run_all_cells(page, server: LabServer, notebook: str, *, front_end: str = "lab",
                  timeout: float = 600.0) -> float:
    """Open ``notebook`` (in ``"lab"`` or ``"notebook"`` 7), wait for its kernel, run every cell.

    Returns the run's seconds.

    "Run All" sent before the kernel is connected runs nothing, so the cells are run only once
    the kernel is connected and idle. Outputs and execution counts are cleared first, so a
    finished run is one where every code cell has a count again and the kernel is idle. Raises
    ``AssertionError`` on the first error output (a failing cell stops the run).
    """
    page.goto(server.page_url(notebook, front_end))
    page.wait_for_function(_KERNEL_READY_JS, timeout=120_000, polling=250)
    server.remember_children()
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
    start = time.monotonic()
    run_all = "() => window.jupyterapp.commands.execute('notebook:run-all-cells')"
    page.evaluate(run_all)
    deadline = start + timeout
    sent, attempts = time.monotonic(), 1
    while True:
        progress = page.evaluate(_PROGRESS_JS)
        assert not progress["errors"], f"{notebook}: error output {progress['errors']}"
        done = (progress["executed"] == progress["total"] and progress["pending"] == 0
                and progress["status"] == "idle")
        if done:
            return time.monotonic() - start
        untouched = progress["executed"] == 0 and progress["pending"] == 0 and progress["status"] == "idle"
        if untouched and time.monotonic() - sent > RUN_ALL_RETRY_S and attempts < RUN_ALL_ATTEMPTS:
            # "Run All" was swallowed (seen on a loaded machine: the kernel idle, not one cell queued)
            page.evaluate(run_all)
            sent, attempts = time.monotonic(), attempts + 1
        if time.monotonic() > deadline:
            raise TimeoutError(f"{notebook}: {progress} after {timeout:.0f} s ({attempts} Run All)")
        page.wait_for_timeout(500)


# --- comparing pictures ------------------------------------------------------------------


def decode_png(data: bytes) -> np.ndarray:
    """RGB ``uint8`` pixels of a PNG (a screenshot)."""
    import io

    import matplotlib.image as mpimg

    return np.round(mpimg.imread(io.BytesIO(data), format="png")[..., :3] * 255).astype(np.uint8)


def scale_nearest(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """``rgb`` resized to ``height`` x ``width`` by nearest neighbour (how the page enlarges voxels)."""
    rows = np.arange(height) * rgb.shape[0] // height
    columns = np.arange(width) * rgb.shape[1] // width
    return rgb[rows][:, columns]


def mismatch(shown: np.ndarray, expected: np.ndarray, *, shift: int = 2, tolerance: int = 8) -> float:
    """Smallest fraction of differing pixels over all shifts of up to ``shift`` px in x and y.

    ``expected`` is first scaled to ``shown``'s size. A pixel differs when a channel is off by
    more than ``tolerance`` (rounding of the opacity, colour management); a border of ``shift``
    px is left out so every shift compares the same number of pixels.
    """
    height, width = shown.shape[:2]
    expected = scale_nearest(expected, height, width).astype(np.int16)
    core = shown[shift:height - shift, shift:width - shift].astype(np.int16)
    best = 1.0
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            window = expected[shift + dy:height - shift + dy, shift + dx:width - shift + dx]
            differing = (np.abs(core - window).max(axis=-1) > tolerance).mean()
            best = min(best, float(differing))
    return best
