"""The registry never loses a model: archive-before-replace, one version per model, recovery after SIGKILL.

Real NEU models from ../shared; the kill tests SIGKILL a real process at a named step
(``TOOLKIT_TEST_KILL_AT``, a hook used only by tests) and let the next run recover.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import training_pipeline
from toolkit.core.errors import UserError
from toolkit.core.files import sha256_file
from toolkit.core.layout import Workspace
from toolkit.promotion.registry import KILL_ENV, Registry

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models(shared_models, tiny_model):
    """Three distinct real models: production v1.0, the better v1.1, and a tiny third one."""
    return {"v10": shared_models / "neu_v1.0_half.pt", "v11": shared_models / "neu_v1.1_full.pt", "tiny": tiny_model}


@pytest.fixture(scope="module")
def registered_v10(tmp_path_factory, models):
    """A workspace whose production v1.0 is registered (copied for each test)."""
    ws = Workspace.at(tmp_path_factory.mktemp("registered") / "ws")
    ws.root.mkdir()
    shutil.copyfile(models["v10"], ws.production_model)
    Registry.load(ws).register_existing_production()
    return ws.root


@pytest.fixture
def ws(registered_v10, tmp_path) -> Workspace:
    root = tmp_path / "ws"
    shutil.copytree(registered_v10, root)
    return Workspace.at(root)


def _versions(ws: Workspace) -> list[tuple[str, str]]:
    return [(v["version"], v["sha256"]) for v in Registry.load(ws).versions]


def _sidecar(ws: Workspace) -> dict:
    return json.loads(ws.production_sidecar.read_text())


def _assert_consistent(ws: Workspace, version: str, model: Path) -> None:
    """Production holds ``model`` as ``version``; sidecar, registry, archives and --status agree."""
    assert ws.production_model.read_bytes() == model.read_bytes()
    registry = Registry.load(ws)
    assert registry.production_entry()["version"] == version
    assert _sidecar(ws)["version"] == version and _sidecar(ws)["sha256"] == sha256_file(model)
    shas = [v["sha256"] for v in registry.versions]
    assert len(shas) == len(set(shas)), "two versions hold one model"
    for entry in registry.versions:
        registry.verify_archive(entry)
    status = training_pipeline.status(ws.root)
    assert status["ok"], status["problems"]
    assert status["production"]["version"] == version
    assert not list(ws.root.glob(".*.tmp")) and not list(ws.models.glob(".*.tmp"))


def _rollback_cli(ws: Workspace, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "training_pipeline.py"), "--root", str(ws.root), "--rollback",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


# --- archive before replace ------------------------------------------------------------------------

def test_rollback_rearchives_production_whose_archive_was_deleted(ws, models):
    Registry.load(ws).promote(models["v11"])
    (ws.models / "yolov8_v1.1.pt").unlink()  # production's only other copy is gone
    run = _rollback_cli(ws)
    assert run.returncode == 0, run.stderr
    assert ws.production_model.read_bytes() == models["v10"].read_bytes()
    assert (ws.models / "yolov8_v1.1.pt").read_bytes() == models["v11"].read_bytes()  # archived again first
    assert _rollback_cli(ws, "1.1").returncode == 0
    _assert_consistent(ws, "1.1", models["v11"])


def test_rollback_archives_a_hand_placed_production_first(ws, models):
    Registry.load(ws).promote(models["v11"])
    shutil.copyfile(models["tiny"], ws.production_model)  # someone copied a model in by hand
    run = _rollback_cli(ws)
    assert run.returncode == 0, run.stderr
    assert _versions(ws) == [("1.0", sha256_file(models["v10"])), ("1.1", sha256_file(models["v11"])),
                             ("1.2", sha256_file(models["tiny"]))]
    assert (ws.models / "yolov8_v1.2.pt").read_bytes() == models["tiny"].read_bytes()
    _assert_consistent(ws, "1.1", models["v11"])  # the production before the hand-placed one


def test_hand_placed_production_without_registry_is_archived_before_anything(tmp_path, models):
    ws = Workspace.at(tmp_path)
    shutil.copyfile(models["tiny"], ws.production_model)
    problems = training_pipeline.status(ws.root)["problems"]
    assert [p["problem"] for p in problems] == [f"production (sha256 {sha256_file(models['tiny'])[:12]}) "
                                                "is not in the registry yet"]
    run = _rollback_cli(ws)
    assert run.returncode == 1 and "no earlier production version" in run.stderr
    assert _versions(ws) == [("1.0", sha256_file(models["tiny"]))]
    Registry.load(ws).promote(models["v11"])
    assert _rollback_cli(ws).returncode == 0
    _assert_consistent(ws, "1.0", models["tiny"])


def test_replacing_production_is_refused_when_it_cannot_be_archived(ws, models):
    registry = Registry.load(ws)
    registry.promote(models["v11"])
    archive = ws.models / "yolov8_v1.1.pt"
    archive.write_bytes(models["tiny"].read_bytes())  # the archive of production now holds other bytes
    before = ws.production_model.read_bytes()
    for attempt in (lambda: Registry.load(ws).rollback(), lambda: Registry.load(ws).promote(models["tiny"])):
        with pytest.raises(UserError, match="not safely archived") as info:
            attempt()
        assert "\n" not in str(info.value)
        assert ws.production_model.read_bytes() == before
    run = _rollback_cli(ws)
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1 and "not safely archived" in run.stderr
    assert ws.production_model.read_bytes() == before


# --- one version per model, rollback by history -----------------------------------------------

def test_promoting_an_archived_model_reuses_its_version(ws, models):
    registry = Registry.load(ws)
    assert registry.promote(models["v11"])["version"] == "1.1"
    assert Registry.load(ws).rollback()["version"] == "1.0"
    again = Registry.load(ws).promote(models["v11"])
    assert again["version"] == "1.1"
    assert _versions(ws) == [("1.0", sha256_file(models["v10"])), ("1.1", sha256_file(models["v11"]))]
    _assert_consistent(ws, "1.1", models["v11"])
    assert _rollback_cli(ws).returncode == 0
    _assert_consistent(ws, "1.0", models["v10"])


def test_rollback_goes_back_through_production_history(ws, models):
    Registry.load(ws).promote(models["v11"])
    Registry.load(ws).promote(models["tiny"])
    assert [Registry.load(ws).rollback()["version"] for _ in range(2)] == ["1.1", "1.0"]  # not 1.1 -> 1.2 -> 1.1
    with pytest.raises(UserError, match="no earlier production version"):
        Registry.load(ws).rollback()
    # an explicit version, then --rollback: back to the production before it, not the highest version
    Registry.load(ws).rollback("1.2")
    Registry.load(ws).rollback("1.1")
    assert training_pipeline.status(ws.root)["previous_version"] == "1.2"
    run = _rollback_cli(ws)
    assert run.returncode == 0, run.stderr
    _assert_consistent(ws, "1.2", models["tiny"])


# --- --status ------------------------------------------------------------------------------------

def _status_cli(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "training_pipeline.py"), "--root", str(root), "--status", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_status_checks_production_sidecar_and_archives(ws, models):
    Registry.load(ws).promote(models["v11"])
    healthy = _status_cli(ws.root)
    assert healthy.returncode == 0 and "all consistent" in healthy.stdout
    assert "--rollback would restore version 1.0" in healthy.stdout

    sidecar = _sidecar(ws)
    ws.production_sidecar.write_text(json.dumps({**sidecar, "version": "1.0"}))
    (ws.models / "yolov8_v1.0.pt").write_bytes(b"changed")
    shutil.copyfile(models["tiny"], ws.models / "yolov8_v1.7.pt")
    status = json.loads(_status_cli(ws.root, "--json").stdout)
    problems = " | ".join(p["problem"] + ": " + p["fix"] for p in status["problems"])
    assert not status["ok"]
    assert "yolov8_model.json does not describe the production model (version 1.1)" in problems
    assert "archive of version 1.0 (yolov8_v1.0.pt) was changed after archiving: restore" in problems
    assert "yolov8_v1.7.pt is archived but not registered" in problems
    text = _status_cli(ws.root).stdout
    assert "3 problem(s)" in text and "was changed after archiving" in text

    (ws.models / "yolov8_v1.1.pt").unlink()
    problems = training_pipeline.status(ws.root)["problems"]
    assert any("archive of version 1.1 is missing" in p["problem"] and "production holds it" in p["fix"]
               for p in problems)


def test_status_before_any_model(tmp_path):
    import setup_training

    setup_training.run(setup_training.SetupConfig(root=tmp_path, classes=("scratch", "dent")))  # no model yet
    run = _status_cli(tmp_path)
    assert run.returncode == 0, run.stderr
    assert "None" not in run.stdout and "Production: none yet" in run.stdout
    nightly = subprocess.run([sys.executable, str(REPO / "training_pipeline.py"), "--root", str(tmp_path),
                              "--if-new-data"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert nightly.returncode == 0, nightly.stderr
    assert "None" not in nightly.stdout + nightly.stderr and "(none yet)" in nightly.stdout


@pytest.mark.parametrize("content", [b'{"versions": [', b"[]", b'{"versions": "1.0"}',
                                     b'{"versions": [{"version": 1.0, "file": "x.pt"}]}',
                                     b'{"versions": [], "events": [{"at": 1}]}', b"\xff\xfe\x00garbage"],
                         ids=["truncated", "list", "string", "bad-entry", "bad-event", "not-utf8"])
def test_damaged_registry_gets_one_restore_line(ws, content):
    ws.registry.write_bytes(content)
    before = ws.production_model.read_bytes()
    for run in (_status_cli(ws.root), _rollback_cli(ws)):
        assert run.returncode == 1, run.stdout
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "restore registry.json from a backup" in lines[0], run.stderr
    assert ws.production_model.read_bytes() == before and ws.registry.read_bytes() == content


# --- SIGKILL at every step; the next run recovers ----------------------------------------------

_PROMOTE = """
import sys
from pathlib import Path
from toolkit.core.layout import Workspace
from toolkit.core.lock import workspace_lock
from toolkit.promotion.registry import Registry
ws = Workspace.at(sys.argv[1])
with workspace_lock(ws, what="test promotion"):
    Registry.load(ws).promote(Path(sys.argv[2]), metrics={"map50": 0.786})
"""


def _promote(ws: Workspace, model: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.run([sys.executable, "-c", _PROMOTE, str(ws.root), str(model)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)


PROMOTE_STEPS = ["promote_pending", "promote_archive_temp", "promote_archived", "promote_registered",
                 "install_temp", "installed", "sidecar_written"]


@pytest.mark.parametrize("step", PROMOTE_STEPS)
def test_promotion_killed_at_each_step_is_recovered_by_the_next_run(ws, models, step):
    killed = _promote(ws, models["v11"], kill_at=step)
    assert killed.returncode == -9, killed.stderr[-1500:]
    prod = ws.production_model.read_bytes()
    replaced = step in ("installed", "sidecar_written")
    assert prod == (models["v11"] if replaced else models["v10"]).read_bytes()  # never missing, never half
    if step.endswith("temp"):  # the kill left a temp file behind
        assert list(ws.models.glob(".yolov8_v1.1.pt.*.tmp")) or list(ws.root.glob(".yolov8_model.pt.*.tmp"))
    assert not training_pipeline.status(ws.root)["ok"]  # --status sees the interrupted promotion
    rerun = _promote(ws, models["v11"])  # the same promotion again (what a pipeline rerun does)
    assert rerun.returncode == 0, rerun.stderr[-1500:]
    assert _versions(ws) == [("1.0", sha256_file(models["v10"])), ("1.1", sha256_file(models["v11"]))]
    assert [e["version"] for e in Registry.load(ws).events if e["action"] == "promote"] == ["1.1"]
    _assert_consistent(ws, "1.1", models["v11"])
    assert _rollback_cli(ws).returncode == 0
    _assert_consistent(ws, "1.0", models["v10"])


REGISTER_STEPS = ["register_pending", "register_archive_temp", "register_archived"]


@pytest.mark.parametrize("step", REGISTER_STEPS)
def test_unregistered_production_killed_while_archiving_is_recovered(tmp_path, models, step):
    ws = Workspace.at(tmp_path)
    shutil.copyfile(models["v10"], ws.production_model)
    killed = _promote(ws, models["v11"], kill_at=step)
    assert killed.returncode == -9, killed.stderr[-1500:]
    assert ws.production_model.read_bytes() == models["v10"].read_bytes()
    rerun = _promote(ws, models["v11"])
    assert rerun.returncode == 0, rerun.stderr[-1500:]
    assert _versions(ws) == [("1.0", sha256_file(models["v10"])), ("1.1", sha256_file(models["v11"]))]
    _assert_consistent(ws, "1.1", models["v11"])


ROLLBACK_STEPS = ["rollback_pending", "install_temp", "installed", "sidecar_written", "rearchive_archive_temp"]


@pytest.mark.parametrize("step", ROLLBACK_STEPS)
def test_rollback_killed_at_each_step_is_recovered_by_the_next_run(ws, models, step):
    Registry.load(ws).promote(models["v11"])
    if step.startswith("rearchive"):
        (ws.models / "yolov8_v1.1.pt").unlink()
    killed = _rollback_cli(ws, env={KILL_ENV: step})
    assert killed.returncode == -9, killed.stderr[-1500:]
    replaced = step in ("installed", "sidecar_written")
    assert ws.production_model.read_bytes() == (models["v10"] if replaced else models["v11"]).read_bytes()
    if step.endswith("temp"):
        assert list(ws.models.glob(".*.tmp")) or list(ws.root.glob(".*.tmp"))
    # the next run of any kind repairs first: a nightly run that finds no new data, here
    nightly = subprocess.run([sys.executable, str(REPO / "training_pipeline.py"), "--root", str(ws.root),
                              "--if-new-data", "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert nightly.returncode == 0, nightly.stderr[-1500:]
    assert json.loads(nightly.stdout)["decision"] == "skipped"
    if replaced:
        _assert_consistent(ws, "1.0", models["v10"])
        assert Registry.load(ws).events[-1]["action"] == "rollback"
    else:
        _assert_consistent(ws, "1.1", models["v11"])
        again = _rollback_cli(ws)
        assert again.returncode == 0, again.stderr
        _assert_consistent(ws, "1.0", models["v10"])
    assert _versions(ws) == [("1.0", sha256_file(models["v10"])), ("1.1", sha256_file(models["v11"]))]


def test_archive_renamed_but_not_registered_by_an_older_run_is_adopted(ws, models):
    """No pending record (e.g. left by an earlier toolkit): the file is registered, not a dead end."""
    shutil.copyfile(models["v11"], ws.models / "yolov8_v1.1.pt")
    assert not training_pipeline.status(ws.root)["ok"]
    rerun = _promote(ws, models["v11"])
    assert rerun.returncode == 0, rerun.stderr[-1500:]
    assert _versions(ws) == [("1.0", sha256_file(models["v10"])), ("1.1", sha256_file(models["v11"]))]
    _assert_consistent(ws, "1.1", models["v11"])


def test_registry_with_two_versions_of_one_model_from_an_older_toolkit(ws, models):
    """What the old registry wrote when v1.1 was promoted again after a rollback: a '1.2' with 1.1's bytes."""
    registry = Registry.load(ws)
    registry.promote(models["v11"])
    registry = Registry.load(ws)
    shutil.copyfile(models["v11"], ws.models / "yolov8_v1.2.pt")
    registry.versions.append({**registry.entry("1.1"), "version": "1.2", "file": "yolov8_v1.2.pt", "parent": "1.0"})
    registry.events.extend([{"action": "rollback", "version": "1.0", "previous": "1.1"},
                            {"action": "promote", "version": "1.2", "previous": "1.0"}])
    registry.save()
    ws.production_sidecar.write_text(json.dumps({**_sidecar(ws), "version": "1.2"}))
    status = training_pipeline.status(ws.root)
    assert any(p["problem"] == "versions 1.1, 1.2 hold the same model" for p in status["problems"])
    assert status["previous_version"] == "1.0"
    run = _rollback_cli(ws)  # the previous production, not "1.2 is already in production" or 1.1
    assert run.returncode == 0, run.stderr
    assert ws.production_model.read_bytes() == models["v10"].read_bytes()
    assert _sidecar(ws)["version"] == "1.0"


# --- issue 19: links, junk in production, refusals, interrupted runs ------------------------------

def test_symlinked_archive_is_reported_and_production_is_never_its_only_copy(ws, models):
    """Item 1: the archive of production replaced by a link to production itself."""
    Registry.load(ws).promote(models["v11"])
    archive = ws.models / "yolov8_v1.1.pt"
    archive.unlink()
    archive.symlink_to(Path("../..") / ws.production_model.name)
    status = training_pipeline.status(ws.root)
    assert not status["ok"]
    assert any("yolov8_v1.1.pt" in p["problem"] and "link" in p["problem"] for p in status["problems"])
    run = _rollback_cli(ws)
    assert run.returncode == 0, run.stderr[-1500:]
    assert ws.production_model.read_bytes() == models["v10"].read_bytes()
    # 1.1's bytes survive in a regular file of their own
    assert not archive.is_symlink() and archive.read_bytes() == models["v11"].read_bytes()
    _assert_consistent(ws, "1.0", models["v10"])


def test_a_linked_archive_is_never_restored(ws, models):
    """Item 1: an archive that is a link (to a copy elsewhere) is refused as a rollback target."""
    Registry.load(ws).promote(models["v11"])
    elsewhere = ws.root / "elsewhere.pt"
    shutil.copyfile(models["v10"], elsewhere)
    archive = ws.models / "yolov8_v1.0.pt"
    archive.unlink()
    archive.symlink_to(elsewhere)
    run = _rollback_cli(ws, "1.0")
    assert run.returncode == 1 and "link" in run.stderr, run.stderr[-1500:]
    assert ws.production_model.read_bytes() == models["v11"].read_bytes()
    assert "pending" not in Registry.load(ws).data


def test_junk_production_is_kept_for_forensics_never_versioned_never_installed(ws, models):
    """Item 2: 'not a model' in yolov8_model.pt; and a junk version left by an older toolkit."""
    Registry.load(ws).promote(models["v11"])
    junk = b"not a model\n"
    ws.production_model.write_bytes(junk)
    status = training_pipeline.status(ws.root)
    assert any("does not load as a model" in p["problem"] for p in status["problems"]), status["problems"]
    run = _rollback_cli(ws)
    assert run.returncode == 0, run.stderr[-1500:]
    assert ws.production_model.read_bytes() == models["v11"].read_bytes()  # the last production that loads
    registry = Registry.load(ws)
    junk_sha = hashlib.sha256(junk).hexdigest()
    assert registry.entry_by_sha(junk_sha) is None and [v["version"] for v in registry.versions] == ["1.0", "1.1"]
    kept = registry.quarantined(junk_sha)
    assert kept is not None and kept.read_bytes() == junk and not kept.name.startswith("yolov8_v")
    _assert_consistent(ws, "1.1", models["v11"])
    # an older toolkit registered the junk as 1.2: it is never installed again
    shutil.copyfile(kept, ws.models / "yolov8_v1.2.pt")
    registry.versions.append({**registry.entry("1.1"), "version": "1.2", "file": "yolov8_v1.2.pt",
                              "sha256": junk_sha})
    registry.save()
    again = _rollback_cli(ws, "1.2")
    assert again.returncode == 1 and "does not load" in again.stderr, again.stderr[-1500:]
    assert ws.production_model.read_bytes() == models["v11"].read_bytes()
    assert "pending" not in Registry.load(ws).data


_FSIZE_PROMOTE = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
""" + _PROMOTE


def test_a_refused_promotion_leaves_no_pending_record(ws, models):
    """Item 10: a real write failure (RLIMIT_FSIZE: the 6 MB archive copy fails) leaves the registry clean."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(KILL_ENV, None)
    run = subprocess.run([sys.executable, "-c", _FSIZE_PROMOTE, str(ws.root), str(models["v11"])], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 1 and "cannot archive" in run.stderr, run.stderr[-1500:]
    assert "pending" not in Registry.load(ws).data
    _assert_consistent(ws, "1.0", models["v10"])


def test_rollback_reissued_after_a_killed_rollback_steps_back_once(ws, models):
    """Item 10: the recovery finishes the killed rollback; the repeated command does not do a second one."""
    Registry.load(ws).promote(models["v11"])
    Registry.load(ws).promote(models["tiny"])
    killed = _rollback_cli(ws, env={KILL_ENV: "installed"})
    assert killed.returncode == -9, killed.stderr[-1500:]
    again = _rollback_cli(ws)
    assert again.returncode == 0, again.stderr[-1500:]
    assert "interrupted rollback to version 1.1 was finished" in again.stdout
    _assert_consistent(ws, "1.1", models["v11"])


def test_run_killed_after_production_was_replaced_gets_its_history_line(ws, models):
    """Item 10: the history line of a killed promotion, and its report temp files, handled by the next run."""
    stamp = "20990101-000000-000001"
    env = {**os.environ, "PYTHONPATH": str(REPO), KILL_ENV: "sidecar_written"}
    code = _PROMOTE.replace('metrics={"map50": 0.786}', f'run="{stamp}"')
    killed = subprocess.run([sys.executable, "-c", code, str(ws.root), str(models["v11"])], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=env)
    assert killed.returncode == -9, killed.stderr[-1500:]
    ws.reports.mkdir(parents=True, exist_ok=True)
    temps = [ws.reports / f".compare_{stamp}.json.x1y2.tmp", ws.reports / f".pipeline_{stamp}.html.a9b8.tmp"]
    for t in temps:
        t.write_text("half a report")
    assert not training_pipeline.status(ws.root)["ok"]  # --status names the leftovers
    nightly = subprocess.run([sys.executable, str(REPO / "training_pipeline.py"), "--root", str(ws.root),
                              "--if-new-data", "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert nightly.returncode == 0, nightly.stderr[-1500:]
    runs = {r["run"]: r for r in training_pipeline.read_history(ws, last=10)}
    assert runs[stamp]["decision"] == "promoted" and runs[stamp]["production"]["version"] == "1.1"
    assert not any(t.exists() for t in temps)
    _assert_consistent(ws, "1.1", models["v11"])


def test_status_mentions_a_forced_first_model(tmp_path, models):
    """Item 10: a first model promoted with --force below promotion.min_first_map is named by --status."""
    from types import SimpleNamespace

    from toolkit.core.config import Settings

    compared = SimpleNamespace(decision={"first_model": True, "metric": "map50_95", "promote": True})
    forced = training_pipeline._forced(compared, {"map50_95": 0.012}, Settings.load(tmp_path / "none.yaml"))
    assert forced and "0.012" in forced and "min_first_map" in forced
    assert training_pipeline._forced(compared, {"map50_95": 0.5}, Settings.load(tmp_path / "none.yaml")) is None
    ws = Workspace.at(tmp_path / "ws")
    ws.root.mkdir()
    Registry.load(ws).promote(models["v10"], forced=forced)
    out = _status_cli(ws.root)
    assert out.returncode == 0 and "--force" in out.stdout and "0.012" in out.stdout, out.stdout
