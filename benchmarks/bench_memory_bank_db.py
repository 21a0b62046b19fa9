"""Speed and memory of the memory-bank analysis from PostgreSQL against the same records in JSONL.

Generates realistic records (0-3 detections, 5% reviewed; benchmarks/bench_memory_bank.py's
generator), writes them as JSONL in benchmarks/out/ (git-ignored) and loads the same records into
a PostgreSQL table (one row per detection, the README layout with an id key) with COPY. Then, each
in its own subprocess, times:
  jsonl:    read_memory_bank(file) + analyze_memory_bank()
  postgres: read_memory_bank(URL)  + analyze_memory_bank()   (COPY over TCP, parsed by pyarrow)
(--aggregate: aggregate_memory_bank + analyze_aggregate, the analyzer's path without --export: the
JSONL chunk by chunk, PostgreSQL by GROUP BY in the server; floats compared to 9 digits)
and prints the ratio of the best times postgres / jsonl (goal <= 1.2), the ratio of each round (the
two run back to back, so a busy machine weighs on both), and each child's peak memory (ru_maxrss).
The two analyses are checked to be identical.

The server: --url for an existing one (password from PGPASSWORD/.pgpass), else a temporary one is
started like the tests do (tests/pg_server.py: initdb + pg_ctl, as the postgres user under root).

Usage:
    nice -n 10 python benchmarks/bench_memory_bank_db.py                     # 620,000 records = ~1M rows
    nice -n 10 python benchmarks/bench_memory_bank_db.py --records 200000 --repeat 3
    nice -n 10 python benchmarks/bench_memory_bank_db.py --records 6200000 --aggregate   # ~10M rows
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

CHILD = """
import hashlib, json, resource, sys, time
sys.path.insert(0, sys.argv[2])
start = time.perf_counter()
from toolkit.memory.analysis import analyze_aggregate, analyze_memory_bank
from toolkit.memory.memory_bank import aggregate_memory_bank, read_memory_bank
if sys.argv[3] == "aggregate":   # chunk by chunk (a file), GROUP BY in the server (a database)
    bank = aggregate_memory_bank(sys.argv[1], (0.25, 0.6), 0.5)
    analysis = analyze_aggregate(bank)
else:
    bank = read_memory_bank(sys.argv[1])
    analysis = analyze_memory_bank(bank, uncertain=(0.25, 0.6), iou_match=0.5)
seconds = time.perf_counter() - start
rounded = lambda v: round(v, 9) if isinstance(v, float) else v   # the server sums in its own order
digest = json.dumps({"records": bank.records, "skipped": bank.skipped, "classes": json.loads(json.dumps(
    analysis.classes), parse_float=lambda t: round(float(t), 9)), "priorities": [{k: rounded(v) for k, v in p.items()}
                                                                                 for p in analysis.priorities]},
                    sort_keys=True, default=str)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024,
                  "records": bank.records, "rows": bank.rows_read, "digest": hashlib.sha256(digest.encode()).hexdigest()}))
"""


def load_postgres(url: str, records_path: Path) -> tuple[int, int]:
    """Create the table and COPY the records' rows into it; returns (rows, detections)."""
    import psycopg

    from toolkit.memory.memory_bank import ALL_COLUMNS
    from toolkit.memory.bank_table import record_rows
    from toolkit.memory.memory_bank_sql import SqlAppender, parse_url

    loc = parse_url(url)
    with SqlAppender(url):  # creates the table with the README layout (+ id, + timestamp index)
        pass
    params = {k: v for k, v in (("host", loc.host), ("port", loc.port), ("user", loc.username),
                                ("password", loc.password), ("dbname", loc.database)) if v}
    rows = dets = 0
    cols = ",".join(f'"{c}"' for c in ALL_COLUMNS)
    with psycopg.connect(**params) as con:
        con.execute(f'TRUNCATE "{loc.table}" RESTART IDENTITY')
        with con.cursor().copy(f'COPY "{loc.table}" ({cols}) FROM STDIN') as copy:
            with open(records_path, "rb") as fh:
                for raw in fh:
                    record = json.loads(raw)
                    for row in record_rows(record):
                        copy.write_row([None if row[c] == "" else row[c] for c in ALL_COLUMNS])
                        rows += 1
                        dets += row["kind"] == "detection" and row["class"] != ""
        con.execute(f'ANALYZE "{loc.table}"')
    return rows, dets


def run_child(target: str, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, target, str(REPO), mode], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=620_000, help="records (about 1.6 rows each)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, alternating; the best is kept")
    parser.add_argument("--url", help="an existing server's URL (else a temporary server is started)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument("--aggregate", action="store_true",
                        help="the analyzer's path without --export: JSONL chunk by chunk, GROUP BY in PostgreSQL")
    args = parser.parse_args()
    mode = "aggregate" if args.aggregate else "whole"
    args.out.mkdir(parents=True, exist_ok=True)

    from bench_memory_bank import generate

    raw = args.out / f"detections_{args.records}.jsonl"
    if not raw.exists():
        print(f"generating {args.records} records -> {raw}", file=sys.stderr)
        generate(raw, args.records)
    same = args.out / f"detections_{args.records}_parseable.jsonl"  # the rows a table can hold: no broken lines
    if not same.exists():
        with open(raw, "rb") as src, open(same, "wb") as dst:
            for line in src:
                try:
                    json.loads(line)
                except ValueError:
                    continue
                dst.write(line)

    server = None
    url = args.url
    if url is None:
        import pg_server

        server = pg_server.start()
        os.environ["PGPASSWORD"] = pg_server.PASSWORD
        url = server.url("bench_detections")
    try:
        started = time.perf_counter()
        rows, dets = load_postgres(url, same)
        print(f"loaded {rows} rows ({dets} detections) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        jsonl_runs, pg_runs = [], []
        for _ in range(args.repeat):
            jsonl_runs.append(run_child(str(same), mode))
            pg_runs.append(run_child(url, mode))
    finally:
        if server is not None:
            server.stop()
    best_j = min(jsonl_runs, key=lambda r: r["seconds"])
    best_p = min(pg_runs, key=lambda r: r["seconds"])
    assert best_j["digest"] == best_p["digest"] and best_j["records"] == best_p["records"], "analyses differ"
    print(json.dumps({"mode": mode, "records": best_j["records"], "postgres_rows_sent": best_p["rows"], "rows": rows, "detections": dets,
                      "jsonl_s": round(best_j["seconds"], 2), "postgres_s": round(best_p["seconds"], 2),
                      "ratio": round(best_p["seconds"] / best_j["seconds"], 3),
                      "jsonl_peak_mb": round(best_j["peak_mb"]), "postgres_peak_mb": round(best_p["peak_mb"]),
                      "round_ratios": [round(p["seconds"] / j["seconds"], 3) for j, p in zip(jsonl_runs, pg_runs)],
                      # CPU of the analysing process only (not the server's): steadier on a busy machine
                      "cpu_ratio": round(min(r["cpu_s"] for r in pg_runs) / min(r["cpu_s"] for r in jsonl_runs), 3),
                      "cpu_s": {"jsonl": round(min(r["cpu_s"] for r in jsonl_runs), 2),
                                "postgres": round(min(r["cpu_s"] for r in pg_runs), 2)},
                      "runs": {"jsonl": [round(r["seconds"], 2) for r in jsonl_runs],
                               "postgres": [round(r["seconds"], 2) for r in pg_runs]},
                      "load_after": [round(v, 2) for v in os.getloadavg()],
                      "goal": "ratio <= 1.2 (issue 20), peak memory like JSONL's"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
