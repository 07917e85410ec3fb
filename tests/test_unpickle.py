"""Reading pickled whole-model checkpoints (the authors' ``BratsCV_best.pt``) without running their code.

The checkpoints here are real ``torch.save`` files of real modules; the malicious ones carry live
payloads that would create a marker file if unpickled normally (the raw-stream test shows one doing
so under ``pickle.loads``), and the reader must refuse them before anything runs.
"""

from __future__ import annotations

import functools
import importlib
import os
import pickle
import subprocess
import sys
import types
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from brats_utils.checkpoints import load_pretrained
from brats_utils.errors import CheckpointError
from brats_utils.model import PRESETS, UNet3D, build_model
from brats_utils.unpickle import Record, read_pickled_checkpoint, read_pickled_state_dict

#: The authors' notebook defined their model as ``__main__.ImprovedUNet3D``.
ImprovedUNet3D = type("ImprovedUNet3D", (UNet3D,),
                      {"__module__": "__main__", "__qualname__": "ImprovedUNet3D"})


@pytest.fixture
def authors_best(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, nn.DataParallel]:
    """``torch.save(DataParallel(ImprovedUNet3D))`` as on the authors' two T4s; the class is gone after."""
    torch.manual_seed(0)
    wrapped = nn.DataParallel(ImprovedUNet3D(**PRESETS["paper"]))
    # what DataParallel records on a two-GPU machine (here there is none, so set it by hand)
    wrapped.device_ids, wrapped.output_device, wrapped.src_device_obj = [0, 1], 0, torch.device("cuda", 0)
    path = tmp_path / "BratsCV_best.pt"
    with monkeypatch.context() as patch:
        patch.setattr(sys.modules["__main__"], "ImprovedUNet3D", ImprovedUNet3D, raising=False)
        torch.save(wrapped, path)
    return path, wrapped


def test_the_authors_whole_model_file_needs_their_class_and_is_refused_by_weights_only(authors_best):
    path, _ = authors_best
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    with pytest.raises(AttributeError, match="ImprovedUNet3D"):  # the normal reader needs __main__'s class
        torch.load(path, weights_only=False)


def test_the_state_dict_of_a_pickled_data_parallel_model_loads_into_the_paper_preset(authors_best):
    path, wrapped = authors_best
    state = read_pickled_state_dict(path)
    expected = wrapped.state_dict()
    assert list(state) == list(expected)
    assert all(key.startswith("module.enc1.") for key in list(state)[:4])
    assert all(torch.equal(state[key], expected[key]) for key in expected)

    model = load_pretrained(build_model("paper"), state).eval()
    x = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), wrapped.module.eval()(x))


def test_the_legacy_format_reads_too_and_is_just_as_restricted(tmp_path, monkeypatch):
    """``_use_new_zipfile_serialization=False`` (torch < 1.6's only format) also pickles each module
    class with its source code; neither the class nor the source is used."""
    torch.manual_seed(0)
    wrapped = nn.DataParallel(ImprovedUNet3D(**PRESETS["paper"]))
    path = tmp_path / "legacy_best.pt"
    with monkeypatch.context() as patch, pytest.warns(UserWarning, match="source code"):
        patch.setattr(sys.modules["__main__"], "ImprovedUNet3D", ImprovedUNet3D, raising=False)
        torch.save(wrapped, path, _use_new_zipfile_serialization=False)
    state = read_pickled_state_dict(path)
    assert list(state) == list(wrapped.state_dict())
    assert all(torch.equal(state[key], value) for key, value in wrapped.state_dict().items())

    marker = tmp_path / "pwned"
    evil = tmp_path / "legacy_evil.pt"
    torch.save({"x": torch.ones(2), "y": Payload((os.system, (f"touch {marker}",)))}, evil,
               _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=rf"calls {os.system.__module__}.system"):
        read_pickled_checkpoint(evil)
    assert not marker.exists()


def test_the_other_objects_come_back_as_inert_records(authors_best):
    path, _ = authors_best
    record = read_pickled_checkpoint(path)
    assert isinstance(record, Record) and record.dotted_name == "torch.nn.parallel.data_parallel.DataParallel"
    assert record.attributes["src_device_obj"] == torch.device("cuda", 0)
    inner = record.attributes["_modules"]["module"]
    assert inner.dotted_name == "__main__.ImprovedUNet3D"
    assert inner.attributes["config"] == {**build_model("paper").config}
    assert inner.attributes["_modules"]["enc1"].dotted_name == "torch.nn.modules.container.Sequential"


def test_a_fresh_interpreter_without_the_class_reads_it(authors_best, tmp_path):
    path, wrapped = authors_best
    out = tmp_path / "state.pt"
    code = ("import sys, torch; from brats_utils.unpickle import read_pickled_state_dict; "
            "torch.save(read_pickled_state_dict(sys.argv[1]), sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(path), str(out)], check=True)
    state = torch.load(out, weights_only=True)
    assert list(state) == list(wrapped.state_dict())


def test_an_epoch_checkpoint_with_optimizer_state_and_custom_objects_loads(tmp_path, monkeypatch):
    model = build_model("paper", base_filters=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(1, 4, 8, 8, 8)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    Settings = type("Settings", (), {"__module__": "__main__", "__qualname__": "Settings"})
    settings = Settings()
    settings.patch = (128, 128, 128)
    checkpoint = {"epoch": 41, "model_state_dict": model.state_dict(),
                  "optimizer_state_dict": optimizer.state_dict(),
                  "scheduler_state_dict": scheduler.state_dict(),
                  "best_val_dice": 0.79, "history": [0.5, 0.7], "settings": settings, "note": b"raw bytes",
                  "numpy": [np.float64(0.79), np.float32(1.5), np.int64(41), np.bool_(True)],
                  "shape": torch.Size([2, 3])}
    path = tmp_path / "epoch_041.pt"
    with monkeypatch.context() as patch:
        patch.setattr(sys.modules["__main__"], "Settings", Settings, raising=False)
        torch.save(checkpoint, path)

    state = read_pickled_state_dict(path)
    assert list(state) == list(model.state_dict())
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())
    whole = read_pickled_checkpoint(path)
    adam = whole["optimizer_state_dict"]
    assert adam["param_groups"] == optimizer.state_dict()["param_groups"]
    assert torch.equal(adam["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert (whole["epoch"], whole["best_val_dice"], whole["history"], whole["note"]) == (41, 0.79, [0.5, 0.7],
                                                                                       b"raw bytes")
    assert [(type(v), v) for v in whole["numpy"]] == [(type(v), v) for v in checkpoint["numpy"]]
    assert whole["shape"] == (2, 3)
    assert whole["settings"].dotted_name == "__main__.Settings"
    assert whole["settings"].attributes == {"patch": (128, 128, 128)}


def _payloads(marker: Path) -> dict[str, tuple]:
    """``global refused first -> (callable, args)``; each call would create ``marker``."""
    python = f"open({str(marker)!r}, 'w').close()"
    return {
        f"{os.system.__module__}.system": (os.system, (f"touch {marker}",)),
        "builtins.eval": (eval, (python,)),
        "builtins.exec": (exec, (python,)),
        "subprocess.call": (subprocess.call, (["touch", str(marker)],)),
        "subprocess.Popen": (subprocess.Popen, (["touch", str(marker)],)),
        "functools.partial": (functools.partial(os.system, f"touch {marker}"), ()),
    }


class Payload:
    """An object whose unpickling calls ``reduce[0](*reduce[1])``."""

    def __init__(self, reduce: tuple) -> None:
        self.reduce = reduce

    def __reduce__(self) -> tuple:
        return self.reduce


@pytest.mark.parametrize("refused", list(_payloads(Path("m"))))
def test_a_checkpoint_whose_pickle_calls_a_function_is_refused_before_it_runs(refused, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": build_model("paper", base_filters=2).state_dict(),
                "extra": Payload(_payloads(marker)[refused])}, path)
    for read in (read_pickled_state_dict, read_pickled_checkpoint):
        with pytest.raises(CheckpointError, match=rf"calls {refused}\b.*file {path}"):
            read(path)
    assert not marker.exists()


@pytest.mark.parametrize(("refused", "reduce"), [
    ("builtins.getattr", (getattr, ("text", "upper"))),
    ("importlib.import_module", (importlib.import_module, ("json",))),
])
def test_a_harmless_call_is_refused_too(refused, reduce, tmp_path):
    """The reader cannot tell a harmless call from a harmful one, so it makes none."""
    path = tmp_path / "call.pt"
    torch.save([Payload(reduce)], path)
    with pytest.raises(CheckpointError, match=rf"calls {refused}\b"):
        read_pickled_checkpoint(path)


def _rewrite_archive(path: Path, edit: Callable[[str, bytes], tuple[bytes, int]]) -> None:
    """Rewrite every member of a torch zip archive through ``edit(name, data) -> (data, compression)``."""
    with zipfile.ZipFile(path) as archive:
        members = [(name, archive.read(name)) for name in archive.namelist()]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            data, compression = edit(name, data)
            archive.writestr(name, data, compress_type=compression)


def test_storages_saved_on_a_gpu_land_on_the_cpu(tmp_path):
    """The authors' files name ``cuda:0`` as every storage's location; protocol 2 has no frames, so the
    location string can be spliced into the pickle to make such a file without a GPU."""
    state = build_model("paper", base_filters=2).state_dict()
    path = tmp_path / "gpu.pt"
    torch.save(state, path)
    cpu, cuda = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"

    def to_cuda(name: str, data: bytes) -> tuple[bytes, int]:
        if name.endswith("/data.pkl"):
            assert data.count(cpu) == 1  # memoised: written once, referenced by every storage
            data = data.replace(cpu, cuda)
        return data, zipfile.ZIP_STORED

    _rewrite_archive(path, to_cuda)
    loaded = read_pickled_state_dict(path)
    assert all(value.device.type == "cpu" and torch.equal(value, state[key]) for key, value in loaded.items())


def test_a_compressed_archive_member_is_refused(tmp_path):
    path = tmp_path / "compressed.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    _rewrite_archive(path, lambda name, data: (data, zipfile.ZIP_DEFLATED))
    with pytest.raises(CheckpointError, match="is compressed"):
        read_pickled_state_dict(path)


def test_a_raw_pickle_stream_is_read_with_the_same_restrictions(tmp_path):
    marker = tmp_path / "pwned"
    # getattr(__import__('os'), 'system')('touch <marker>') in opcodes: GLOBAL, MARK, STRING, TUPLE, REDUCE
    stream = (b"\x80\x02cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'touch "
              + str(marker).encode() + b"'\ntR.")
    pickle.loads(stream)  # live: the normal unpickler runs it
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "evil.pkl"
    path.write_bytes(stream)
    with pytest.raises(CheckpointError, match=rf"calls builtins.__import__.*file {path}"):
        read_pickled_checkpoint(path)
    assert not marker.exists()

    os_system = tmp_path / "evil_os.pkl"
    os_system.write_bytes(pickle.dumps(Payload((os.system, (f"touch {marker}",))), protocol=4))
    with pytest.raises(CheckpointError, match="calls .*system"):
        read_pickled_checkpoint(os_system)
    assert not marker.exists()

    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"epoch": 3, "scores": {1, 2}}, protocol=2))
    assert read_pickled_checkpoint(plain) == {"epoch": 3, "scores": {1, 2}}


def test_files_that_hold_no_checkpoint_give_a_clear_error(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    not_a_checkpoint = rf"neither a zip archive nor a binary pickle stream, file {text}"
    with pytest.raises(CheckpointError, match=not_a_checkpoint):
        read_pickled_state_dict(text)
    with pytest.raises(CheckpointError, match="not found"):
        read_pickled_state_dict(tmp_path / "absent.pt")

    truncated = tmp_path / "truncated.pt"
    torch.save(build_model("paper", base_filters=2).state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match=str(truncated)):
        read_pickled_state_dict(truncated)

    legacy = tmp_path / "legacy.pt"
    torch.save(build_model("paper", base_filters=2).state_dict(), legacy,
               _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match=rf"storage \S+ is truncated, file {legacy}"):
        read_pickled_state_dict(legacy)

    no_weights = tmp_path / "numbers.pt"
    torch.save({"epoch": 3}, no_weights)
    with pytest.raises(CheckpointError, match="holds no model weights"):
        read_pickled_state_dict(no_weights)


def test_a_module_whose_weights_are_not_tensors_is_refused(tmp_path, monkeypatch):
    Fake = type("Fake", (), {"__module__": "__main__", "__qualname__": "Fake"})
    fake = Fake()
    fake._parameters, fake._buffers, fake._modules = {"weight": "not a tensor"}, {}, {}
    path = tmp_path / "fake.pt"
    with monkeypatch.context() as patch:
        patch.setattr(sys.modules["__main__"], "Fake", Fake, raising=False)
        torch.save(fake, path)
    with pytest.raises(CheckpointError, match=rf"weight is 'not a tensor', not a tensor, file {path}"):
        read_pickled_state_dict(path)


def test_classes_of_modules_that_do_not_exist_here_are_recorded_without_an_import(tmp_path, monkeypatch):
    helpers = types.ModuleType("authors_notebook_helpers")
    Augment = type("Augment", (), {"__module__": helpers.__name__, "__qualname__": "Augment"})
    helpers.Augment = Augment
    augment = Augment()
    augment.p = 0.5
    path = tmp_path / "helpers.pt"
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, helpers.__name__, helpers)
        torch.save({"augment": augment}, path)
    assert helpers.__name__ not in sys.modules
    record = read_pickled_checkpoint(path)["augment"]  # an import would fail: the module exists nowhere
    assert (record.dotted_name, record.attributes) == ("authors_notebook_helpers.Augment", {"p": 0.5})
    assert helpers.__name__ not in sys.modules
