"""Issue 25 ("Trust, round four"), the model items: a production file that loads but is no detector
(break 5) and the safe loader's allocations (break 6). Each failed before its fix."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import training_pipeline
from toolkit.core.layout import Workspace
from toolkit.promotion.registry import Registry

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def ws(tmp_path, shared_models) -> Workspace:
    ws = Workspace.at(tmp_path / "ws")
    ws.root.mkdir()
    shutil.copyfile(shared_models / "neu_v1.0_half.pt", ws.production_model)
    Registry.load(ws).register_existing_production()
    return ws


def _linear_checkpoint(path: Path) -> Path:
    import torch

    torch.save({"model": torch.nn.Linear(4, 4)}, path)
    return path


# --- break 5: a file that loads but is no detection model --------------------------------------------

def test_a_checkpoint_that_is_no_detector_is_never_versioned_nor_installed(ws, shared_models, tmp_path):
    """A torch.nn.Linear checkpoint as yolov8_model.pt: --status names it, a rollback keeps it in quarantine
    (never a version), and one an older toolkit versioned is never installed."""
    from toolkit.core.errors import UserError
    from toolkit.core.offline import load_yolo

    Registry.load(ws).promote(shared_models / "neu_v1.1_full.pt")
    _linear_checkpoint(ws.production_model)
    junk_sha = hashlib.sha256(ws.production_model.read_bytes()).hexdigest()
    with pytest.raises(UserError, match="not a YOLO detection model"):
        load_yolo(ws.production_model, ws.ultralytics_config)
    status = training_pipeline.status(ws.root)
    assert any("Linear" in p["problem"] for p in status["problems"]), status["problems"]
    run = subprocess.run([sys.executable, str(REPO / "training_pipeline.py"), "--root", str(ws.root), "--rollback"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-1500:]
    registry = Registry.load(ws)
    assert registry.entry_by_sha(junk_sha) is None and registry.quarantined(junk_sha) is not None
    assert [v["version"] for v in registry.versions] == ["1.0", "1.1"]
    # an older toolkit versioned it as 1.2 and installed it: --status names it, a rollback to it is refused
    kept = registry.quarantined(junk_sha)
    shutil.copyfile(kept, ws.models / "yolov8_v1.2.pt")
    registry.versions.append({**registry.entry("1.1"), "version": "1.2", "file": "yolov8_v1.2.pt", "sha256": junk_sha})
    registry.save()
    with pytest.raises(UserError, match="does not load"):
        Registry.load(ws).rollback("1.2")
    status = training_pipeline.status(ws.root)   # not production: named all the same
    assert any("version 1.2" in p["problem"] and "no YOLO detection model" in p["problem"]
               for p in status["problems"]), status["problems"]
    shutil.copyfile(kept, ws.production_model)
    status = training_pipeline.status(ws.root)
    assert not status["ok"] and any("version 1.2" in p["problem"] and "detection" in p["problem"]
                                    for p in status["problems"]), status["problems"]


# --- break 6: the safe loader allocates nothing the file chooses ---------------------------------------

class _Call:
    """Pickles as ``func(*args)``: what a hostile file asks the unpickler to call."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile(path: Path, obj) -> Path:
    import torch

    torch.save({"model": obj, "epoch": -1}, path)
    return path


@pytest.mark.parametrize("call", ["linear", "bytearray", "storage", "from_type"])
def test_the_safe_loader_never_builds_what_the_file_sizes(tmp_path, call):
    """Linear(20000, 20000) by REDUCE took 1.6 GB during the "safe" load (100,000 would be 40 GB); bytearray
    and a storage of the file's size likewise. Refused from the opcodes, before anything is allocated."""
    import resource

    import torch

    from toolkit.core.errors import UserError
    from toolkit.core.offline import load_yolo

    func, args = {"linear": (torch.nn.Linear, (20000, 20000)), "bytearray": (bytearray, (10 ** 9,)),
                  "storage": (torch.FloatStorage, (250_000_000,)),
                  # a rebuild function on the allow-list that calls its first argument: Linear(20000, 20000) again
                  "from_type": (torch._tensor._rebuild_from_type_v2, (torch.nn.Linear, torch.Tensor, (20000, 20000), {}))
                  }[call]
    path = _hostile(tmp_path / f"{call}.pt", _Call(func, *args))
    assert path.stat().st_size < 10_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UserError, match="allocate"):
        load_yolo(path, tmp_path / "cfg")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000   # KiB: nothing of 1.6+ GB


def test_a_zip_entry_claiming_more_than_the_file_is_refused(tmp_path, shared_models):
    import zipfile

    from toolkit.core.checkpoint_scan import reaching_out

    src = shared_models / "neu_v1.0_half.pt"
    dest = tmp_path / "deflated.pt"
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as b:
        for info in a.infolist():
            b.writestr(info.filename, a.read(info.filename))
    assert any("compressed" in why for why in reaching_out(dest))
    assert reaching_out(src) == []


def test_arch_refuses_a_pt_that_is_no_yolo_detector_at_setup(tmp_path, shared_models, capsys):
    import setup_training

    lin = _linear_checkpoint(tmp_path / "lin.pt")
    assert setup_training.main(["--root", str(tmp_path / "ws"), "--classes", "a,b", "--arch", str(lin)]) == 1
    err = capsys.readouterr().err
    assert "not a YOLO detection checkpoint" in err and not (tmp_path / "ws" / "training").exists()
    assert setup_training.main(["--root", str(tmp_path / "ok"), "--classes", "a,b", "--arch",
                                str(shared_models / "neu_v1.0_half.pt")]) == 0


def test_a_storage_declared_larger_than_the_file_is_refused(tmp_path):
    """A legacy (non-zip) checkpoint whose pickle declares a storage of 10**9 bytes in a file of a few
    hundred bytes (torch's legacy reader allocates a storage at its declared size before reading it): the
    scan refuses it from the opcodes. (The loader refused this file before too, for its legacy form; a zip
    checkpoint's record sizes torch checks itself.)"""
    import io
    import pickletools
    import resource

    import torch

    from toolkit.core.errors import UserError
    from toolkit.core.offline import load_yolo

    buffer = io.BytesIO()
    torch.save({"model": torch.zeros(4, dtype=torch.uint8)}, buffer, _use_new_zipfile_serialization=False)
    data, stream, pos = buffer.getvalue(), io.BytesIO(buffer.getvalue()), 0
    for _ in range(4):   # magic, protocol, sys info, the object: the last holds the storage's declaration
        start = stream.tell()
        ops = list(pickletools.genops(stream))
    at = max(i for i, (op, _, _) in enumerate(ops) if op.name == "BINPERSID")
    op, arg, pos = next(o for o in reversed(ops[:at]) if o[0].name in ("BININT1", "BININT2", "BININT"))
    size = {"BININT1": 2, "BININT2": 3, "BININT": 5}[op.name]
    data = data[:pos] + b"J" + (10 ** 9).to_bytes(4, "little") + data[pos + size:]   # genops: positions in the file
    dest = tmp_path / "declared.pt"
    dest.write_bytes(data)
    from toolkit.core.checkpoint_scan import reaching_out

    assert any("storages declare 1,000,000,000 elements" in why for why in reaching_out(dest)), reaching_out(dest)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UserError):
        load_yolo(dest, tmp_path / "cfg")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000
