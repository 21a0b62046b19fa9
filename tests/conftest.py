"""Shared fixtures: paths to ../shared (skipped with a reason where absent), synthetic data, a tiny model."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the scripts live at the top level, next to toolkit/
    sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("TOOLKIT_SHARED", REPO.parent / "shared")).resolve()
NEU_DIR = SHARED / "datasets" / "NEU-DET"
MODELS_DIR = SHARED / "models"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: over about 20 s on a quiet 2-core machine (real training, the full "
                            "NEU test split, the demo's loop); left out of the default run, run by .ci/run "
                            "(-m \"slow or not slow\") or alone with -m slow")


@pytest.fixture(scope="session")
def neu_dir() -> Path:
    if not (NEU_DIR / "ANNOTATIONS").is_dir():
        pytest.skip(f"NEU-DET not found at {NEU_DIR} (it lives in ../shared, which a user's clone does not have)")
    return NEU_DIR


@pytest.fixture(scope="session")
def shared_models() -> Path:
    if not (MODELS_DIR / "neu_v1.0_half.pt").is_file():
        pytest.skip(f"shared models not found at {MODELS_DIR} (../shared is not part of a user's clone)")
    return MODELS_DIR


@pytest.fixture(scope="session")
def ultralytics_config_dir(tmp_path_factory) -> Path:
    """One ultralytics settings folder for the whole test session (never the user's home)."""
    from toolkit.core.offline import prepare_ultralytics

    path = tmp_path_factory.mktemp("ultralytics_cfg")
    prepare_ultralytics(path)
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A small synthetic YOLO dataset (train/val folders + data yaml) made by the generator."""
    import yaml

    from toolkit.data.synthetic import NEU_CLASSES, write_batch

    root = tmp_path_factory.mktemp("tiny_dataset")
    train = write_batch(root / "train", n_images=24, fmt="yolo", size=64, seed=11)
    val = write_batch(root / "val", n_images=12, fmt="yolo", size=64, seed=12)
    data = {"path": str(root), "train": "train/images", "val": "val/images",
            "names": dict(enumerate(NEU_CLASSES))}
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return {"root": root, "yaml": root / "data.yaml", "train": train, "val": val}


@pytest.fixture(scope="session")
def tiny_model(tiny_dataset, ultralytics_config_dir, tmp_path_factory) -> Path:
    """A real YOLOv8n trained for one epoch at imgsz=64 on synthetic images (about 20 s on 2 cores)."""
    from ultralytics import YOLO

    project = tmp_path_factory.mktemp("tiny_model_runs")
    model = YOLO("yolov8n.yaml")
    model.train(data=str(tiny_dataset["yaml"]), epochs=1, imgsz=64, batch=8, device="cpu", workers=0,
                project=str(project), name="run", exist_ok=True, plots=False, verbose=False, amp=False)
    best = project / "run" / "weights" / "best.pt"
    assert best.is_file()
    return best


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server in a temporary folder for the whole session (tests/pg_server.py)."""
    import pg_server

    try:
        server = pg_server.start()
    except pg_server.Unavailable as exc:
        pytest.skip(f"no PostgreSQL server could be started: {exc}")
    yield server
    server.stop()


@pytest.fixture
def pg_password(monkeypatch, postgres):
    """The client password in PGPASSWORD (as a plant sets it), never in the URL."""
    import pg_server

    monkeypatch.setenv("PGPASSWORD", pg_server.PASSWORD)
    return pg_server.PASSWORD


@pytest.fixture
def synthetic_workspace(tmp_path, tiny_model) -> Path:
    """A set-up workspace: production = the tiny real model; one synthetic batch waiting in training/incoming."""
    import shutil

    import setup_training
    from toolkit.data.synthetic import NEU_CLASSES, write_batch

    root = tmp_path / "ws"
    root.mkdir()
    shutil.copyfile(tiny_model, root / "yolov8_model.pt")
    setup_training.run(setup_training.SetupConfig(root=root, classes=NEU_CLASSES))
    write_batch(root / "training" / "incoming" / "batch_001", 40, size=64, seed=21)
    return root


# Optional: each test's CPU seconds (this process and its children, user + sys) and wall seconds,
# one tab-separated line per test, to decide `slow` marks by CPU time, which depends far less on the
# machine's load than wall time. Set TOOLKIT_TEST_CPU_LOG=/path/to/file to turn it on.
_CPU_LOG = os.environ.get("TOOLKIT_TEST_CPU_LOG")


def _cpu_seconds() -> float:
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    try:  # worker processes still alive (a pool kept between tests) are not in RUSAGE_CHILDREN yet
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                times = child.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
    except ImportError:
        pass
    return total


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not _CPU_LOG:
        yield
        return
    import time

    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    yield
    cpu, wall = _cpu_seconds() - cpu0, time.perf_counter() - wall0
    with open(_CPU_LOG, "a", encoding="utf-8") as log:
        log.write(f"{cpu:.2f}\t{wall:.2f}\t{item.nodeid}\n")
