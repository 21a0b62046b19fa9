"""Issue 19 ("Trust, round three"): the breaks a hostile test still found, each with a test that failed before.

Items 1, 2 and 10 (registry) are in tests/test_registry_safety.py; item 5 (field sizes) is h20's.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.memory_bank_sql import mask_url, parse_url, split_url

REPO = Path(__file__).resolve().parent.parent


# --- item 3: a password with '@', '/', ':' ----------------------------------------------------------

@pytest.mark.parametrize("password", ["Ab@Cd12345", "p@ss/w0rd", "a:b:c", "pw%40x", "host", "insp", "5432",
                                      "detections", "postgresql", "@", "x@host:5432/insp"])
def test_url_password_is_parsed_like_the_driver_and_masked_whole(password):
    from urllib.parse import unquote

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
    from toolkit.synthetic import write_batch, write_memory_bank

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
