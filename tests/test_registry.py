"""Versioned promotion and rollback, and the workspace lock - with the real NEU models."""
from __future__ import annotations

import json
import multiprocessing
import shutil

import pytest

from toolkit.core.errors import UserError
from toolkit.core.files import sha256_file
from toolkit.core.layout import Workspace
from toolkit.core.lock import workspace_lock
from toolkit.promotion.registry import Registry
from toolkit.promotion.versions import next_version


def test_next_version():
    assert next_version(None) == "1.0"
    assert next_version("1.0") == "1.1"
    assert next_version("1.9") == "1.10"
    assert next_version("1.3", major=True) == "2.0"
    with pytest.raises(UserError):
        next_version("one")


@pytest.fixture
def workspace_v10(tmp_path, shared_models):
    ws = Workspace.at(tmp_path / "ws")
    ws.root.mkdir()
    shutil.copyfile(shared_models / "neu_v1.0_half.pt", ws.production_model)
    return ws


def test_promote_and_rollback_are_byte_exact(workspace_v10, shared_models):
    ws = workspace_v10
    v10, v11 = shared_models / "neu_v1.0_half.pt", shared_models / "neu_v1.1_full.pt"
    registry = Registry.load(ws)
    first = registry.register_existing_production()
    assert first["version"] == "1.0" and first["classes"][0] == "crazing"
    entry = registry.promote(v11, metrics={"map50": 0.786}, reasons=["better"], classes=first["classes"])
    assert entry["version"] == "1.1" and entry["parent"] == "1.0"
    assert ws.production_model.read_bytes() == v11.read_bytes()
    sidecar = json.loads(ws.production_sidecar.read_text())
    assert sidecar["version"] == "1.1" and sidecar["sha256"] == sha256_file(v11)
    assert Registry.load(ws).production_entry()["version"] == "1.1"

    restored = Registry.load(ws).rollback()
    assert restored["version"] == "1.0"
    assert ws.production_model.read_bytes() == v10.read_bytes()
    assert json.loads(ws.production_sidecar.read_text())["version"] == "1.0"
    # archives are immutable copies
    assert (ws.models / "yolov8_v1.1.pt").read_bytes() == v11.read_bytes()


def test_tampered_archive_is_refused(workspace_v10, shared_models):
    ws = workspace_v10
    registry = Registry.load(ws)
    registry.register_existing_production()
    registry.promote(shared_models / "neu_v1.1_full.pt")
    archive = ws.models / "yolov8_v1.0.pt"
    data = bytearray(archive.read_bytes())
    data[1000] ^= 0xFF
    archive.write_bytes(bytes(data))
    before = ws.production_model.read_bytes()
    with pytest.raises(UserError, match="does not match its recorded sha256"):
        Registry.load(ws).rollback("1.0")
    assert ws.production_model.read_bytes() == before


def _hold_lock(root, ready, release):
    ws = Workspace.at(root)
    with workspace_lock(ws, what="test holder"):
        ready.set()
        release.wait(30)


def test_second_run_is_refused_and_a_dead_holder_releases(tmp_path):
    ws = Workspace.at(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    assert ready.wait(60)
    with pytest.raises(UserError, match=r"busy: test holder \(pid"):
        with workspace_lock(ws):
            pass
    holder.kill()  # SIGKILL: the OS releases the lock, no stale lock remains
    holder.join(10)
    with workspace_lock(ws):
        pass
