"""train.bat under wine's cmd: menu choices, argument passthrough, Python discovery, exit codes.

The stand-in Python is a real Windows executable: pip's own script launcher (distlib's t64.exe,
the file behind every ``pip.exe``) with a shebang that makes it run ``cmd /c record.cmd``. So
train.bat starts a genuine .exe, as it would start python.exe, and record.cmd writes the
command line it got to ``calls.txt`` and exits with a chosen code.

train.bat runs inside ``cmd /c "..."`` (what Task Scheduler does) from a driver batch file that
then prints ``TRAIN_BAT_EXIT=<errorlevel>``: wine hands only 8 bits of an exit code back to
Linux, and 9009 must come through whole.

Wine quirks met on the way (wine 8.0), which shape the tests, not train.bat:
- ``set /p`` reads everything waiting on a pipe, so the menu test types one answer after each
  prompt, as a person does.
- ``call`` of a batch file hands back 1 for any non-zero exit code, so exit codes are tested
  with .exe interpreters; the .bat interpreter (pyenv-win shim) test checks the call only.
"""
from __future__ import annotations

import importlib.util
import io
import os
import re
import select
import shlex
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

WINE = shutil.which("wine")
REPO = Path(__file__).resolve().parent.parent
BAT = REPO / "train.bat"
STAGE_SCRIPTS = ("training_analyzer.py", "setup_training.py", "dataset_preparer.py",
                 "train_yolov8.py", "model_comparator.py", "training_pipeline.py")
NO_PYTHON_EXIT = 9009

needs_wine = pytest.mark.skipif(
    WINE is None, reason="wine is not installed (Debian: apt-get install -y wine); train.bat needs a Windows cmd")


def win(path: Path | str) -> str:
    """The path as wine's Windows programs see it (drive Z: is the Linux root)."""
    return "Z:" + str(path).replace("/", "\\")


def _launcher_bytes() -> bytes:
    spec = importlib.util.find_spec("pip")
    launcher = Path(spec.origin).parent / "_vendor" / "distlib" / "t64.exe" if spec and spec.origin else None
    if launcher is None or not launcher.is_file():
        pytest.skip("pip's distlib launcher t64.exe is missing: no Windows .exe to act as python.exe")
    return launcher.read_bytes()


class StandIn:
    """A fake interpreter (python.exe, py.exe, python.bat) that records its command lines."""

    def __init__(self, folder: Path, name: str, rc: int = 0, probe_rc: int = 0, log_dir: Path | None = None):
        self.path = folder / name
        batch = name.lower().endswith((".bat", ".cmd"))
        # record.cmd, calls.txt and rc.txt live in log_dir: the shebang cannot quote a path with spaces
        self.folder = folder if batch else (log_dir or folder)
        assert batch or " " not in str(self.folder), "the launcher's shebang cannot hold a path with spaces"
        folder.mkdir(parents=True, exist_ok=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        # A .exe stand-in runs record.cmd with its own path first; a batch one is record.cmd.
        own, first, second = ('"%~f0" ', "1", "2") if batch else ("", "2", "3")
        script = (
            "@echo off\r\n"
            f'>>"%~dp0calls.txt" echo {own}%*\r\n'
            # the probe train.bat runs before trusting py/python: "-c ..." or "-3 -c ..."
            f'if "%~{first}"=="-c" exit /b {probe_rc}\r\n'
            f'if "%~{first}"=="-3" if "%~{second}"=="-c" exit /b {probe_rc}\r\n'
            f'set "RC={rc}"\r\n'
            'if exist "%~dp0rc.txt" for /f "usebackq" %%R in ("%~dp0rc.txt") do set "RC=%%R"\r\n'
            "exit /b %RC%\r\n"
        )
        if batch:
            self.path.write_bytes(script.encode())
        else:
            (self.folder / "record.cmd").write_bytes(script.encode())
            archive = io.BytesIO()
            with zipfile.ZipFile(archive, "w") as zf:
                zf.writestr("__main__.py", "")
            shebang = f"#!C:\\windows\\system32\\cmd.exe /c {win(self.folder / 'record.cmd')}\n".encode()
            self.path.write_bytes(_launcher_bytes() + shebang + archive.getvalue())

    def set_rc(self, rc: int) -> None:
        (self.folder / "rc.txt").write_text(str(rc))

    def _lines(self) -> list[list[str]]:
        log = self.folder / "calls.txt"
        if not log.exists():
            return []
        calls = []
        for line in log.read_text(errors="replace").splitlines():
            lexer = shlex.shlex(line, posix=True)
            lexer.whitespace_split, lexer.escape = True, ""  # Windows paths: \ is no escape
            calls.append(list(lexer))
        return calls

    def probes(self) -> list[list[str]]:
        return [c[1:] for c in self._lines() if c[1:2] == ["-c"] or c[1:3] == ["-3", "-c"]]

    def calls(self) -> list[list[str]]:
        """Each script run: the argument list after the interpreter's own path."""
        return [c[1:] for c in self._lines() if not (c[1:2] == ["-c"] or c[1:3] == ["-3", "-c"])]


@pytest.fixture(scope="session")
def wine_env(tmp_path_factory):
    """One wine prefix for the session (its first start takes seconds); never the user's ~/.wine."""
    if WINE is None:
        pytest.skip("wine is not installed (Debian: apt-get install -y wine); train.bat needs a Windows cmd")
    prefix = tmp_path_factory.mktemp("wineprefix")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WINE") and k not in ("TRAIN_BAT_PYTHON", "DISPLAY", "WAYLAND_DISPLAY")}
    # mscoree/mshtml off: no Mono or Gecko install dialog when the prefix is made.
    env.update(WINEPREFIX=str(prefix), WINEDEBUG="-all", WINEDLLOVERRIDES="mscoree,mshtml=")
    # A wineserver that stays up between tests (about 1 s less per wine start), started before
    # the prefix is made so that no second server races the first one's shutdown.
    wineserver = shutil.which("wineserver")
    if wineserver:
        subprocess.run([wineserver, "-p"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    try:
        # Not captured: the services this first start leaves running (with the persistent
        # server) would hold a captured pipe open forever.
        subprocess.run([WINE, "cmd", "/c", "exit 0"], env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300, check=True)
        yield env
    finally:
        if wineserver:  # stop this prefix's wineserver and its services, nothing else
            subprocess.run([wineserver, "-k"], env=env, capture_output=True, timeout=60)


@pytest.fixture()
def toolkit(tmp_path) -> Path:
    """A toolkit folder with spaces and parentheses in its name: train.bat plus empty stage scripts."""
    home = tmp_path / "my tools (x86)"
    home.mkdir()
    shutil.copyfile(BAT, home / "train.bat")
    for name in STAGE_SCRIPTS:
        (home / name).write_text("")
    return home


def _driver(tmp_path: Path, home: Path, args: str, whole_exit_code: bool) -> Path:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    bat = f'"{win(home / "train.bat")}"'
    # cd elsewhere: train.bat must find its scripts next to itself, not in the current folder.
    lines = ["@echo off", f'cd /d "{win(elsewhere)}"']
    if whole_exit_code:
        # cmd /c, as Task Scheduler runs it; its exit code, all of it, printed for the test.
        assert not set(args) & set("&|<>^"), "cmd /c re-parses the line: keep specials out of it"
        lines += [f'cmd /c "{bat} {args}"', "echo TRAIN_BAT_EXIT=%ERRORLEVEL%"]
    else:
        # The line a person types at the prompt; control ends in train.bat (8-bit exit code).
        lines += [f"{bat} {args}"]
    driver = tmp_path / "driver.cmd"
    driver.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return driver


def _env(wine_env: dict, python: StandIn | Path | None = None, path_dirs: tuple[Path, ...] = ()) -> dict:
    env = dict(wine_env)
    if python is not None:
        env["TRAIN_BAT_PYTHON"] = win(python.path if isinstance(python, StandIn) else python)
    if path_dirs:
        env["WINEPATH"] = ";".join(win(d) for d in path_dirs)  # put before wine's own PATH
    return env


def run_bat(wine_env, tmp_path, home, args="", python=None, path_dirs=(), whole_exit_code=False):
    """Run ``train.bat args`` in wine's cmd; return (exit code, stdout, stderr).

    Wine hands Linux only the low 8 bits of an exit code; ``whole_exit_code`` runs train.bat
    through ``cmd /c`` and reads its errorlevel inside wine instead (for 9009, 300).
    """
    driver = _driver(tmp_path, home, args, whole_exit_code)
    proc = subprocess.run([WINE, "cmd", "/c", win(driver)], env=_env(wine_env, python, path_dirs),
                          cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    out, err = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    if not whole_exit_code:
        return proc.returncode, out, err
    found = re.search(r"TRAIN_BAT_EXIT=(-?\d+)", out)
    assert found, f"the driver did not finish: {out!r} {err!r}"
    return int(found.group(1)), out[:found.start()], err


def test_train_bat_is_ascii_with_crlf_and_git_keeps_it_so():
    data = BAT.read_bytes()
    data.decode("ascii")  # cmd reads it in the console code page: ASCII is safe in every one
    assert b"\r\n" in data and data.count(b"\n") == data.count(b"\r\n"), "cmd needs CRLF line endings"
    rules = (REPO / ".gitattributes").read_text().split("\n")
    assert "*.bat text eol=crlf" in [r.strip() for r in rules]


@needs_wine
@pytest.mark.parametrize("args, script, expected", [
    ('analyze --source "D:\\new batch" --set epochs=2 "a&b"', "training_analyzer.py",
     ["--source", "D:\\new batch", "--set", "epochs=2", "a&b"]),
    ('setup --root "C:\\plant data\\line 3"', "setup_training.py", ["--root", "C:\\plant data\\line 3"]),
    ("prepare --source D:\\batch --format voc", "dataset_preparer.py", ["--source", "D:\\batch", "--format", "voc"]),
    ("TRAIN --epochs 2 --imgsz=64", "train_yolov8.py", ["--epochs", "2", "--imgsz=64"]),
    ('compare --candidate "run 1\\best.pt" --json', "model_comparator.py", ["--candidate", "run 1\\best.pt", "--json"]),
    ("pipeline --dry-run", "training_pipeline.py", ["--dry-run"]),
    ("status --json", "training_pipeline.py", ["--status", "--json"]),
    ("rollback 1.0", "training_pipeline.py", ["--rollback", "1.0"]),
    ("rollback", "training_pipeline.py", ["--rollback"]),
    ("--if-new-data --json", "training_pipeline.py", ["--if-new-data", "--json"]),
    ('--candidate "D:\\gpu server\\best.pt" --set promotion.min_gain=0.01', "training_pipeline.py",
     ["--candidate", "D:\\gpu server\\best.pt", "--set", "promotion.min_gain=0.01"]),
])
def test_arguments_run_the_stage_script_with_them_unchanged(wine_env, tmp_path, toolkit, args, script, expected):
    python = StandIn(tmp_path / "interp", "python.exe")
    code, out, err = run_bat(wine_env, tmp_path, toolkit, args, python=python)
    assert code == 0, (out, err)
    assert python.calls() == [[win(toolkit / script)] + expected]
    assert python.probes() == []  # an interpreter named by TRAIN_BAT_PYTHON is trusted as is


@needs_wine
@pytest.mark.parametrize("rc, whole", [(1, False), (2, False), (7, False), (1, True), (300, True)])
def test_the_scripts_exit_code_comes_back(wine_env, tmp_path, toolkit, rc, whole):
    python = StandIn(tmp_path / "interp", "python.exe", rc=rc)
    code, out, err = run_bat(wine_env, tmp_path, toolkit, "--json", python=python, whole_exit_code=whole)
    assert code == rc, (out, err)
    assert python.calls() == [[win(toolkit / "training_pipeline.py"), "--json"]]


@needs_wine
def test_help_prints_usage_and_runs_no_python(wine_env, tmp_path, toolkit):
    python = StandIn(tmp_path / "interp", "python.exe", rc=5)
    code, out, _ = run_bat(wine_env, tmp_path, toolkit, "/?", python=python)
    assert code == 0 and "Usage: train.bat" in out and "9009" in out
    assert python.calls() == []


class Console:
    """Types into the menu one answer at a time, after the prompt that asks for it."""

    def __init__(self, proc: subprocess.Popen, timeout: float = 60):
        self.proc, self.deadline, self.seen, self._pending = proc, time.monotonic() + timeout, "", b""

    def expect(self, prompt: str) -> str:
        while prompt.encode() not in self._pending:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, self.deadline - time.monotonic()))
            chunk = os.read(self.proc.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                raise AssertionError(f"no {prompt!r} from the menu; it printed: {self.seen + self._pending.decode()!r}")
            self._pending += chunk
        cut = self._pending.index(prompt.encode()) + len(prompt)
        text = self._pending[:cut].decode("utf-8", "replace")
        self._pending, self.seen = self._pending[cut:], self.seen + text
        return text

    def answer(self, prompt: str, line: str) -> str:
        text = self.expect(prompt)
        self.proc.stdin.write(line.encode() + b"\r\n")
        self.proc.stdin.flush()
        return text

    def finish(self) -> tuple[int, str]:
        self.proc.stdin.close()
        rest = self.proc.stdout.read().decode("utf-8", "replace")
        code = self.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        self.seen += rest
        return code, self.seen


def open_menu(wine_env, tmp_path, home, python) -> Console:
    proc = subprocess.Popen([WINE, "cmd", "/c", win(_driver(tmp_path, home, "", whole_exit_code=False))], env=_env(wine_env, python),
                            cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return Console(proc)


@needs_wine
def test_menu_runs_each_choice_and_returns_the_last_exit_code(wine_env, tmp_path, toolkit):
    python = StandIn(tmp_path / "interp", "python.exe")
    console = open_menu(wine_env, tmp_path, toolkit, python)
    try:
        python.set_rc(3)
        menu = console.answer("Choice: ", "1")
        assert "1  analyze" in menu and "8  rollback" in menu and "0  quit" in menu
        console.answer("Options for analyze (Enter for none, --help to list them): ", '--json --source "D:\\new batch"')
        assert "analyze finished with exit code 3" in console.answer("Choice: ", "9")
        assert 'Unknown choice "9"' in console.answer("Choice: ", "8")
        console.answer("Version to restore (Enter for the previous one): ", "1.2")
        python.set_rc(0)
        console.answer("Choice: ", "7")
        python.set_rc(4)
        console.answer("Choice: ", "2")
        console.answer("Options for setup (Enter for none, --help to list them): ", "")
        for choice, name in (("3", "prepare"), ("4", "train"), ("5", "compare"), ("6", "pipeline")):
            console.answer("Choice: ", choice)
            console.answer(f"Options for {name} (Enter for none, --help to list them): ", "")
        assert "pipeline finished with exit code 4" in console.answer("Choice: ", "q")
        code, seen = console.finish()
    finally:
        console.proc.kill()
        console.proc.wait()
    here = lambda script: win(toolkit / script)  # noqa: E731
    assert python.calls() == [
        [here("training_analyzer.py"), "--json", "--source", "D:\\new batch"],
        [here("training_pipeline.py"), "--rollback", "1.2"],
        [here("training_pipeline.py"), "--status"],
        [here("setup_training.py")],
        [here("dataset_preparer.py")],
        [here("train_yolov8.py")],
        [here("model_comparator.py")],
        [here("training_pipeline.py")],
    ]
    assert code == 4, seen  # the last stage's exit code, handed back after the menu


@needs_wine
@pytest.mark.parametrize("quit_line", ["0", "Q", ""])
def test_menu_quits_on_zero_q_or_an_empty_line(wine_env, tmp_path, toolkit, quit_line):
    python = StandIn(tmp_path / "interp", "python.exe", rc=5)
    console = open_menu(wine_env, tmp_path, toolkit, python)
    try:
        console.answer("Choice: ", quit_line)
        code, seen = console.finish()
    finally:
        console.proc.kill()
        console.proc.wait()
    assert code == 0 and python.calls() == []
    assert seen.count("Choice: ") == 1


@needs_wine
def test_menu_ends_when_its_input_runs_dry(wine_env, tmp_path, toolkit):
    python = StandIn(tmp_path / "interp", "python.exe", rc=5)
    code, out, _ = run_bat(wine_env, tmp_path, toolkit, "", python=python)  # stdin is empty
    assert code == 0 and out.count("Choice: ") == 1 and python.calls() == []


@needs_wine
def test_venv_python_next_to_train_bat_comes_first(wine_env, tmp_path, toolkit):
    venv = StandIn(toolkit / ".venv" / "Scripts", "python.exe", rc=6, log_dir=tmp_path / "venv_log")
    launcher = StandIn(tmp_path / "windows", "py.exe")
    on_path = StandIn(tmp_path / "bin", "python.exe")
    code, out, err = run_bat(wine_env, tmp_path, toolkit, "status", path_dirs=(launcher.folder, on_path.folder))
    assert code == 6, (out, err)
    assert venv.calls() == [[win(toolkit / "training_pipeline.py"), "--status"]]
    assert launcher._lines() == [] and on_path._lines() == []


@needs_wine
def test_py_launcher_runs_python_3_before_python_on_path(wine_env, tmp_path, toolkit):
    launcher = StandIn(tmp_path / "windows", "py.exe", rc=2)
    on_path = StandIn(tmp_path / "bin", "python.exe")
    code, out, err = run_bat(wine_env, tmp_path, toolkit, "prepare --check", path_dirs=(on_path.folder, launcher.folder))
    assert code == 2, (out, err)
    assert launcher.probes() == [["-3", "-c", "import sys; sys.exit(sys.version_info[0] - 3)"]]
    assert launcher.calls() == [["-3", win(toolkit / "dataset_preparer.py"), "--check"]]
    assert on_path._lines() == []


@needs_wine
def test_python_on_path_is_used_when_py_has_no_python_3(wine_env, tmp_path, toolkit):
    launcher = StandIn(tmp_path / "windows", "py.exe", probe_rc=103)  # py.exe: "No suitable Python runtime found"
    on_path = StandIn(tmp_path / "bin", "python.exe", rc=1)
    code, out, err = run_bat(wine_env, tmp_path, toolkit, "train --epochs 1", path_dirs=(launcher.folder, on_path.folder))
    assert code == 1, (out, err)
    assert launcher.calls() == [] and len(launcher.probes()) == 1
    assert on_path.probes() == [["-c", "import sys; sys.exit(sys.version_info[0] - 3)"]]
    assert on_path.calls() == [[win(toolkit / "train_yolov8.py"), "--epochs", "1"]]


@needs_wine
def test_a_python_bat_shim_on_path_is_called(wine_env, tmp_path, toolkit):
    shim = StandIn(tmp_path / "pyenv" / "shims", "python.bat")  # pyenv-win's shims are .bat files
    code, out, err = run_bat(wine_env, tmp_path, toolkit, "compare --json", path_dirs=(shim.folder,))
    assert code == 0, (out, err)
    assert shim.calls() == [[win(toolkit / "model_comparator.py"), "--json"]]


@needs_wine
@pytest.mark.parametrize("args", ["--if-new-data --json", ""])
def test_no_python_says_how_to_install_it_and_exits_9009(wine_env, tmp_path, toolkit, args):
    # wine's PATH holds no Python
    code, out, err = run_bat(wine_env, tmp_path, toolkit, args, whole_exit_code=True)
    assert code == NO_PYTHON_EXIT
    assert "Python 3 was not found" in err and "https://www.python.org/downloads/windows/" in err
    assert win(toolkit / ".venv" / "Scripts" / "python.exe") in err
    assert "Choice:" not in out


@needs_wine
def test_the_store_alias_python_is_not_taken_for_python(wine_env, tmp_path, toolkit):
    store_alias = StandIn(tmp_path / "WindowsApps", "python.exe", probe_rc=9009)  # it opens the Store
    code, _, err = run_bat(wine_env, tmp_path, toolkit, "status", path_dirs=(store_alias.folder,), whole_exit_code=True)
    assert code == NO_PYTHON_EXIT and "Python 3 was not found" in err
    assert store_alias.calls() == [] and len(store_alias.probes()) == 1


@needs_wine
def test_train_bat_python_naming_a_missing_file_is_reported(wine_env, tmp_path, toolkit):
    code, _, err = run_bat(wine_env, tmp_path, toolkit, "status", python=tmp_path / "nowhere" / "python.exe",
                           whole_exit_code=True)
    assert code == NO_PYTHON_EXIT
    assert "TRAIN_BAT_PYTHON" in err and win(tmp_path / "nowhere" / "python.exe") in err


@needs_wine
def test_a_missing_stage_script_is_reported(wine_env, tmp_path, toolkit):
    (toolkit / "model_comparator.py").unlink()
    python = StandIn(tmp_path / "interp", "python.exe")
    code, _, err = run_bat(wine_env, tmp_path, toolkit, "compare", python=python)
    assert code == 1 and "model_comparator.py was not found next to train.bat" in err
    assert python.calls() == []
