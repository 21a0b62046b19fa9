"""Issue 19 ("Trust, round three"): the breaks a hostile test still found, each with a test that failed before.

Items 1, 2 and 10 (registry) are in tests/test_registry_safety.py; item 5 (field sizes) is h20's.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# --- item 3: a password with '@', '/', ':' ----------------------------------------------------------

@pytest.mark.parametrize("password", ["Ab@Cd12345", "p@ss/w0rd", "a:b:c", "pw%40x", "host", "insp", "5432",
                                      "detections", "postgresql", "@", "x@host:5432/insp"])
def test_url_password_is_parsed_like_the_driver_and_masked_whole(password):
    from urllib.parse import unquote

    from toolkit.memory.memory_bank_sql import mask_url, parse_url, split_url

    url = f"postgresql://atuser2:{password}@host:5432/insp?table=detections"
    loc = parse_url(url)
    assert (loc.username, loc.password, loc.host, loc.port, loc.database, loc.table) == \
        ("atuser2", unquote(password), "host", 5432, "insp", "detections")
    assert loc.shown == mask_url(url) == "postgresql://atuser2:***@host:5432/insp?table=detections"
    assert split_url(url)[2] == "host:5432"
    # in free text (an error line, a log line) the same
    assert mask_url(f"cannot reach {url} (timeout)") == \
        "cannot reach postgresql://atuser2:***@host:5432/insp?table=detections (timeout)"


def test_url_without_password_or_with_query_password_is_unchanged_but_masked():
    from toolkit.memory.memory_bank_sql import mask_url

    assert mask_url("postgresql://inspector@h/db?table=t") == "postgresql://inspector@h/db?table=t"
    assert mask_url("postgresql://u@h/db?password=se@cret&table=t") == "postgresql://u@h/db?password=***&table=t"
    assert mask_url("postgresql://u:pw@[::1]:5432/db") == "postgresql://u:***@[::1]:5432/db"
    assert mask_url("sqlite:///C:/bank/detections.db") == "sqlite:///C:/bank/detections.db"


def test_password_with_at_sign_never_reaches_stdout_reports_or_logs(postgres, tmp_path, capsys, caplog,
                                                                    monkeypatch):
    """Item 3: a real server, a role whose password holds '@' and '/', the analyzer's every output."""
    import pg_server
    import training_analyzer
    from bank_helpers import iter_jsonl, write_pg_table
    from toolkit.data.synthetic import write_batch, write_memory_bank

    monkeypatch.delenv("PGPASSWORD", raising=False)
    password = "Ab@Cd1/2:345"
    with postgres.admin() as con:
        con.execute("DROP ROLE IF EXISTS atuser2")
        con.execute(f"CREATE ROLE atuser2 LOGIN PASSWORD '{password}'")
        con.execute(f"GRANT {pg_server.USER} TO atuser2")
    batch = write_batch(tmp_path / "src", n_images=8, size=64, seed=3)
    write_memory_bank(tmp_path / "bank.jsonl", batch, seed=3)
    with postgres.admin(pg_server.DATABASE) as con:
        write_pg_table(con, "at_bank", iter_jsonl(tmp_path / "bank.jsonl"))
    url = f"postgresql://atuser2:{password}@127.0.0.1:{postgres.port}/{pg_server.DATABASE}?table=at_bank"
    root = tmp_path / "ws"
    root.mkdir()
    caplog.set_level(logging.DEBUG)
    assert training_analyzer.main(["--root", str(root), "--memory-bank", url]) == 0
    out = capsys.readouterr()
    assert "atuser2:***@127.0.0.1" in out.out
    texts = [out.out, out.err, caplog.text] + [p.read_text(errors="replace")
                                               for p in (root / "training").rglob("*") if p.is_file()]
    for secret in ("Cd1", "Ab@", password):
        assert not any(secret in t for t in texts), secret
    # a wrong table: the one-line error shows the URL masked whole
    assert training_analyzer.main(["--root", str(root), "--memory-bank", url.replace("at_bank", "nothere")]) == 1
    err = capsys.readouterr().err
    assert "no table 'nothere'" in err and "atuser2:***@127.0.0.1" in err and "Cd1" not in err


# --- item 6: a YAML alias bomb in any YAML the toolkit reads ---------------------------------------

def _alias_bomb(key: str = "names", levels: int = 9) -> str:
    """~600 bytes, 9 levels of 9 aliases: 9**9 strings if anything walked it expanded."""
    parts = ['&a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        parts.append(f"&{chr(97 + i)} [{', '.join(['*' + chr(96 + i)] * 9)}]")
    return f"{key}: [{', '.join(parts)}]\n"


def test_an_alias_bomb_data_yaml_in_an_import_source_is_one_quick_error_line(tmp_path):
    """Item 6: the real preparer on a source whose data.yaml is a bomb (it took 102 s and 2.8 GB)."""
    import setup_training
    from toolkit.data.synthetic import NEU_CLASSES, write_batch

    setup_training.run(setup_training.SetupConfig(root=tmp_path / "ws", classes=NEU_CLASSES))
    src = write_batch(tmp_path / "batch", 3, size=64, seed=1).root
    bomb = _alias_bomb()
    assert len(bomb) < 700
    (src / "data.yaml").write_text("path: .\ntrain: images\n" + bomb)
    run = subprocess.run([sys.executable, str(REPO / "dataset_preparer.py"), "--root", str(tmp_path / "ws"),
                          "--source", str(src)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr[-800:]
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "data.yaml" in errors[0] and "aliases" in errors[0], run.stderr[-800:]
    assert len(errors[0]) < 400


def test_every_toolkit_yaml_reader_refuses_an_alias_bomb(tmp_path):
    """Item 6: dataset.yaml (read by training, the comparator and the manifest) goes through the one loader;
    a --set value that is a bomb stays the text it is."""
    from toolkit.core.config import parse_set_pairs
    from toolkit.core.datafile import read_data_yaml
    from toolkit.core.errors import UserError

    path = tmp_path / "dataset.yaml"
    path.write_text("path: .\ntrain: train.txt\n" + _alias_bomb())
    with pytest.raises(UserError, match="aliases"):
        read_data_yaml(path)
    value = _alias_bomb("x").split(": ", 1)[1]
    assert parse_set_pairs([f"lr0={value}"]) == {"lr0": value}


def test_aliases_within_bounds_still_load():
    from toolkit.core.yaml_safe import load_yaml_text

    assert load_yaml_text("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}


# --- item 7: every numeric setting has a sane range, checked when the settings load -----------------

def _numeric_keys() -> list[str]:
    from toolkit.core.config import DEFAULTS, KEYS, _get

    keys = []
    for key in KEYS:
        try:
            default = _get(DEFAULTS, key)
        except (KeyError, TypeError):
            continue
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            keys.append(key)
    return keys


@pytest.mark.parametrize("value", [1e12, -1e12, 100000])
def test_every_numeric_setting_refuses_an_absurd_value_naming_the_key(tmp_path, value):
    from toolkit.core.config import Settings
    from toolkit.core.errors import ConfigError

    keys = _numeric_keys()
    assert {"training.imgsz", "promotion.bootstrap_resamples", "training.epochs", "evaluation.batch"} <= set(keys)
    accepted = []
    for key in keys:
        section, _, name = key.rpartition(".")
        text = ""
        indent = ""
        for part in section.split("."):
            text += f"{indent}{part}:\n"
            indent += "  "
        (tmp_path / "training.yaml").write_text(f"{text}{indent}{name}: {value!r}\n")
        try:
            Settings.load(tmp_path / "training.yaml")
        except ConfigError as exc:
            assert f"'{key}'" in str(exc), str(exc)
            continue
        accepted.append(key)
    allowed = {"training.seed", "analyzer.seed"} if value == 100000 else set()  # a seed may be any 32-bit number
    assert set(accepted) == allowed, f"{value!r} accepted for {accepted}"


def test_imgsz_and_resamples_of_the_issue_fail_at_dry_run(tmp_path):
    """Item 7: imgsz 100000 passed --dry-run; bootstrap_resamples 1e12 ran 37 s into a MemoryError."""
    import setup_training
    from toolkit.data.synthetic import NEU_CLASSES

    root = tmp_path / "ws"
    setup_training.run(setup_training.SetupConfig(root=root, classes=NEU_CLASSES))
    yaml_path = root / "training" / "configs" / "training.yaml"
    original = yaml_path.read_text()
    for old, new, key in (("imgsz: 640", "imgsz: 100000", "training.imgsz"),
                          ("bootstrap_resamples: 1000", "bootstrap_resamples: 1000000000000", "promotion.bootstrap_resamples")):
        assert old in original
        yaml_path.write_text(original.replace(old, new, 1))
        run = subprocess.run([sys.executable, str(REPO / "training_pipeline.py"), "--root", str(root), "--dry-run"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 or run.returncode == 1, run.stdout[-500:]
        assert key in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr[-800:]


# --- item 9: the safe loader never goes online ----------------------------------------------------

_CRAFT = """
import sys, torch
from ultralytics.nn.modules.block import TorchVision
from ultralytics.nn.tasks import DetectionModel

class Call:
    def __init__(self, cls, *args):
        self.cls, self.args = cls, args
    def __reduce__(self):
        return (self.cls, self.args)

torch.save({"model": Call(TorchVision, "resnet18", "DEFAULT"), "epoch": 1}, sys.argv[1] + "/torchvision.pt")
torch.save({"model": Call(DetectionModel, "https://example.invalid/yolov8n.yaml")}, sys.argv[1] + "/remote_cfg.pt")
"""

_LOAD = """
import sys
from toolkit.core.errors import UserError
from toolkit.core.offline import load_checkpoint, load_yolo
for name in ("torchvision.pt", "remote_cfg.pt"):
    for load in (load_yolo, load_checkpoint):
        try:
            load(sys.argv[1] + "/" + name, sys.argv[1] + "/cfg")
        except UserError as exc:
            print("REFUSED", name, exc)
        else:
            print("LOADED", name)
"""


def test_a_checkpoint_that_would_download_is_refused_and_nothing_is_written(tmp_path):
    """Item 9: a real .pt whose pickle builds the allowed TorchVision('resnet18', 'DEFAULT')."""
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO), "TORCH_HOME": str(tmp_path / "torch_home")}
    made = subprocess.run([sys.executable, "-c", _CRAFT, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)
    assert made.returncode == 0, made.stderr[-800:]
    run = subprocess.run([sys.executable, "-c", _LOAD, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env=env)
    assert run.returncode == 0, run.stderr[-800:]
    lines = run.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("REFUSED") for line in lines), run.stdout
    assert "TorchVision" in lines[0] and "DetectionModel" in lines[2]
    assert not (tmp_path / "torch_home").exists()
    assert "Downloading" not in run.stderr and "resnet18" not in run.stderr


def test_real_checkpoints_pass_the_scan(shared_models, tiny_model):
    from toolkit.core.checkpoint_scan import reaching_out

    last = Path(tiny_model).with_name("last.pt")  # a mid-training checkpoint: its arguments are rebuilt by a call
    for model in (shared_models / "neu_v1.0_half.pt", shared_models / "neu_v1.1_full.pt", tiny_model,
                  *([last] if last.exists() else [])):
        assert reaching_out(model) == [], model


# --- item 10: a refused legacy pickle prints one line, no torch warnings ---------------------------

def test_a_refused_plain_pickle_gives_the_one_line_error_only(tmp_path):
    import pickle

    ws = tmp_path / "ws"
    ws.mkdir()
    with open(ws / "yolov8_model.pt", "wb") as fh:  # a plain pickle (protocol 4) renamed .pt
        pickle.dump({"model": subprocess.CompletedProcess(["x"], 0)}, fh, protocol=4)
    from toolkit.data.synthetic import write_batch

    images = write_batch(tmp_path / "batch", 1, size=64, seed=1).root / "images"
    run = subprocess.run([sys.executable, str(REPO / "training_analyzer.py"), "--root", str(ws), "--scan",
                          str(images)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: refused to load"), run.stderr[-1500:]


# --- item 4: a writer that hit a full disk repairs its own partial line -----------------------------

_SHORT_WRITE = """
import json, os, resource, signal, sys
from toolkit.memory.detection_api import MemoryBankWriter

path, mode = sys.argv[1], sys.argv[2]
record = {"image": "big.jpg", "detections": [{"class": "crazing", "confidence": 0.5, "bbox": [1, 1, 5 + i, 5]}
                                             for i in range(200)]}  # about 11 KB on one line
small = {"image": "after.jpg", "detections": [{"class": "crazing", "confidence": 0.9, "bbox": [1, 1, 5, 5]}]}
with MemoryBankWriter(path, model_version="1.0") as bank:
    bank.append({"image": "before.jpg", "detections": []})
    size = os.path.getsize(path)
    if mode == "fsize":  # the kernel cuts the write at the file-size limit, as a full disk does
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 3940, hard))
    try:
        bank.append(record)
    except OSError as exc:
        print("REFUSED", exc)
    if mode == "fsize":
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))   # space freed
    else:
        os.remove(sys.argv[3])                                     # space freed
    bank.append(small)                                             # the same writer, later
print("DONE")
"""


def _small_tmpfs(tmp_path: Path):
    mount = tmp_path / "small_disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    return mount if done.returncode == 0 else None


@pytest.mark.parametrize("mode", ["tmpfs", "fsize"])
def test_a_writer_cuts_back_its_own_partial_line_after_a_short_write(tmp_path, mode):
    """Item 4: a real short write (a full 64 KB tmpfs where this user may mount one, else RLIMIT_FSIZE)."""
    import os

    args = []
    if mode == "tmpfs":
        mount = _small_tmpfs(tmp_path)
        if mount is None:
            pytest.skip("cannot mount a small tmpfs here (not root); the RLIMIT_FSIZE case covers the short write")
        path = mount / "detections.jsonl"
        filler = mount / "filler"
    else:
        path = tmp_path / "detections.jsonl"
        filler = tmp_path / "unused"
    try:
        if mode == "tmpfs":
            first = subprocess.run(  # the first line, then fill the disk to ~4 KB free
                [sys.executable, "-c", "from toolkit.memory.detection_api import MemoryBankWriter as W\n"
                 f"W({str(path)!r}).append({{'image': 'before.jpg', 'detections': []}})"],
                cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
            assert first.returncode == 0, first.stderr
            free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
            filler.write_bytes(b"\0" * (free - 4096))
        args = [str(path), mode, str(filler)]
        run = subprocess.run([sys.executable, "-c", _SHORT_WRITE, *args], cwd=REPO, capture_output=True, text=True,
                             timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert run.returncode == 0 and "DONE" in run.stdout, run.stderr[-1500:]
        assert "REFUSED" in run.stdout and "bytes written" in run.stdout, run.stdout
        lines = path.read_bytes().split(b"\n")
        assert lines[-1] == b""
        images = [json.loads(line)["image"] for line in lines[:-1]]  # every line whole JSON
        assert images[-1] == "after.jpg" and "big.jpg" not in images and "before.jpg" in images
    finally:
        if mode == "tmpfs":
            subprocess.run(["umount", "-l", str(tmp_path / "small_disk")], capture_output=True)


# --- item 8: the preparer's workers die with it ----------------------------------------------------

def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended (whoever reaps it)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the workers")
def test_workers_die_with_a_killed_preparer(tmp_path):
    """Item 8: SIGKILL the real dataset_preparer.py while its forked workers check a 400-image batch."""
    import os
    import signal
    import time

    import setup_training
    from toolkit.data.synthetic import NEU_CLASSES, write_batch

    setup_training.run(setup_training.SetupConfig(root=tmp_path / "ws", classes=NEU_CLASSES))
    src = write_batch(tmp_path / "batch", 400, size=96, seed=4).root
    proc = subprocess.Popen([sys.executable, str(REPO / "dataset_preparer.py"), "--root", str(tmp_path / "ws"),
                             "--source", str(src), "--workers", "2", "-q"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            workers = [c for c in _children(proc.pid) if _alive(c)]
            if len(workers) >= 2:
                break
            time.sleep(0.01)
        assert len(workers) >= 2, "the preparer never started its worker processes"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        gone_by = time.monotonic() + 5
        while time.monotonic() < gone_by and any(_alive(w) for w in workers):
            time.sleep(0.05)
        survivors = [w for w in workers if _alive(w)]
        assert not survivors, f"workers {survivors} outlived their killed parent"
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


# --- item 10: an import out of inodes says so, and leaves no manifest version behind ---------------

def test_an_import_out_of_inodes_says_so_in_one_line(tmp_path):
    """A real tmpfs with room for bytes but few files (root only: mount)."""
    import setup_training
    from toolkit.data.synthetic import NEU_CLASSES, write_batch

    mount = tmp_path / "few_files"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m,nr_inodes=120", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        setup_training.run(setup_training.SetupConfig(root=mount / "ws", classes=NEU_CLASSES))
        src = write_batch(tmp_path / "batch", 80, size=64, seed=2).root  # 160 files: more than the inodes left
        run = subprocess.run([sys.executable, str(REPO / "dataset_preparer.py"), "--root", str(mount / "ws"),
                              "--source", str(src), "-q"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert run.returncode == 1, run.stderr[-800:]
        line = run.stderr.strip()
        assert len(line.splitlines()) == 1 and "inodes" in line and "free at least 1 bytes" not in line, line
        assert not list((mount / "ws" / "training" / "datasets").rglob("v*.json"))
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_failed_commit_leaves_no_manifest_version_and_a_stale_one_is_removed(tmp_path):
    """The history copy vNNNN.json of a version whose manifest.json was never written does not stay."""
    import setup_training
    from toolkit.data.dataset.manifest import empty_manifest, manifest_history_path, save_manifest
    from toolkit.data.dataset.store import recover_staging
    from toolkit.core.layout import Workspace
    from toolkit.data.synthetic import NEU_CLASSES

    setup_training.run(setup_training.SetupConfig(root=tmp_path / "ws", classes=NEU_CLASSES))
    ws = Workspace.at(tmp_path / "ws")
    manifest = dict(empty_manifest(NEU_CLASSES), version=1)
    save_manifest(ws, manifest)
    ws.manifest.unlink()
    ws.manifest.mkdir()  # the commit (a rename onto manifest.json) fails for real
    with pytest.raises(OSError):
        save_manifest(ws, dict(manifest, version=2))
    assert not manifest_history_path(ws, 2).exists()
    ws.manifest.rmdir()
    save_manifest(ws, manifest)
    manifest_history_path(ws, 3).write_text("{}")  # as a SIGKILL between the two writes leaves it
    notes = recover_staging(ws, manifest)
    assert not manifest_history_path(ws, 3).exists() and manifest_history_path(ws, 1).exists()
    assert any("v0003.json" in n for n in notes)


def test_password_with_at_sign_stays_out_of_the_pipeline_report_and_log(postgres, synthetic_workspace, tiny_model,
                                                                        capsys, monkeypatch):
    """Item 3: the pipeline's analyze stage reads a bank whose URL (training.yaml) holds 'Ab@Cd12345'."""
    import pg_server
    import training_pipeline
    from bank_helpers import iter_jsonl, write_pg_table
    from toolkit.data.synthetic import write_batch, write_memory_bank

    monkeypatch.delenv("PGPASSWORD", raising=False)
    root = synthetic_workspace
    with postgres.admin() as con:
        con.execute("DROP ROLE IF EXISTS atuser3")
        con.execute("CREATE ROLE atuser3 LOGIN PASSWORD 'Ab@Cd12345'")
        con.execute(f"GRANT {pg_server.USER} TO atuser3")
    batch = write_batch(root.parent / "src", n_images=6, size=64, seed=3)
    write_memory_bank(root.parent / "bank.jsonl", batch, seed=3)
    with postgres.admin(pg_server.DATABASE) as con:
        write_pg_table(con, "pipe_bank", iter_jsonl(root.parent / "bank.jsonl"))
    url = f"postgresql://atuser3:Ab@Cd12345@127.0.0.1:{postgres.port}/{pg_server.DATABASE}?table=pipe_bank"
    yaml_path = root / "training" / "configs" / "training.yaml"
    text = yaml_path.read_text()
    assert 'url: ""' in text
    yaml_path.write_text(text.replace('url: ""', f'url: "{url}"', 1))
    code = training_pipeline.main(["--root", str(root), "--candidate", str(tiny_model), "--compare-subset", "4",
                                   "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0, out.err[-1500:]
    reports = list((root / "training" / "reports").glob("pipeline_*.json"))
    logs = list((root / "training" / "logs").glob("*.log"))
    assert reports and logs
    assert "atuser3:***@127.0.0.1" in reports[0].read_text()
    for text in [out.out, out.err] + [p.read_text(errors="replace") for p in reports + logs]:
        assert "Cd12345" not in text


def test_the_scan_follows_names_assembled_from_memoised_strings(tmp_path):
    """Item 9: a hand-written pickle that hides TorchVision behind memo references is still refused."""
    import zipfile

    from toolkit.core.checkpoint_scan import reaching_out

    body = (b"\x80\x04" + b"\x8c\x1cultralytics.nn.modules.block\x94" + b"\x8c\x0bTorchVision\x94" + b"00"
            + b"h\x00h\x01\x93" + b"\x8c\x08resnet18\x8c\x07DEFAULT\x86R.")
    path = tmp_path / "hidden.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hidden/data.pkl", body)
    why = reaching_out(path)
    assert any("calls ultralytics.nn.modules.block.TorchVision" in w for w in why), why
