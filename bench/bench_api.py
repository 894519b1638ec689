"""API benchmark (a script, not a test): `POST /v1/search` latency end to end over loopback, and sustained
feedback writes (wrk) while answers are being generated.

    apt-get install wrk   # the load generator
    python bench/bench_api.py --data-dir var --collection python-docs [--seconds 20] [--connections 16]
    python bench/bench_api.py --render

A `citeloop serve` subprocess serves the data directory (SQLite unless CITELOOP_DATABASE_URL says otherwise).
Search: 200 sequential requests with distinct queries (COVID-QA dev questions), after 10 warm-up requests.
Feedback: wrk posts relevance judgements on one stored search for --seconds while a client thread keeps
asking questions; every 201 must be an event in the export afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import citeloop  # noqa: E402,F401
from bench.readme_tables import write_table  # noqa: E402
from bench.server import admin_key, running_server  # noqa: E402

RESULTS = REPO / "bench" / "results" / "api.json"
KEY, HEADING = "api-bench", "## API (`python bench/bench_api.py`)"
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO / "var")
    parser.add_argument("--collection", default="python-docs")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="`citeloop serve --workers`.")
    parser.add_argument("--code", type=Path, default=REPO, help="Checkout whose api.app serves (e.g. an older commit's worktree).")
    parser.add_argument("--render", action="store_true")
    args = parser.parse_args()
    if args.render:
        write_table(KEY, HEADING, render_table(json.loads(RESULTS.read_text())))
        return

    import httpx

    from api.client import Client
    from citeloop.config import Settings

    settings = Settings(data_dir=args.data_dir)
    code = args.code.resolve()
    key = admin_key(args.data_dir, code)
    with running_server(args.data_dir, args.workers, code) as (base, _server):
        client = Client(base, key)
        questions = [json.loads(l)["user_input"] for l in (REPO / "corpora" / "covidqa" / "questions_dev.jsonl").read_text().splitlines()]
        for q in questions[:10]:
            client.search(args.collection, q)
        timings = []
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as http:
            for q in questions[10:210]:
                start = time.perf_counter()
                response = http.post("/v1/search", json={"collection": args.collection, "query": q, "k": 10})
                timings.append((time.perf_counter() - start) * 1000)
                response.raise_for_status()
        search = {
            "requests": len(timings),
            "p50_ms": round(statistics.median(timings), 2),
            "p95_ms": round(statistics.quantiles(timings, n=20)[18], 2),
        }
        print("search", search, flush=True)

        target = client.search(args.collection, "how do I read a file line by line")
        before = len(client.export(args.collection).decode().splitlines())
        body = json.dumps({"search_id": target["search_id"], "chunk_id": target["results"][0]["chunk_id"], "relevant": True})
        stop = threading.Event()
        asks = []

        def keep_asking() -> None:
            with Client(base, key) as asker:
                i = 0
                while not stop.is_set():
                    asker.ask(args.collection, questions[300 + i % 300])
                    asks.append(1)
                    i += 1

        asker = threading.Thread(target=keep_asking, daemon=True)
        asker.start()
        time.sleep(2)  # the first ask is generating when wrk starts
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(WRK_SCRIPT.format(body=body, key=key))
        out = subprocess.run(
            ["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "-s", script.name, base + "/v1/judgements"],
            capture_output=True, text=True, check=True,
        ).stdout
        stop.set()
        asker.join(timeout=300)
        total = int(re.search(r"(\d+) requests in", out).group(1))
        non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
        after = len(client.export(args.collection).decode().splitlines())
        feedback = {
            "seconds": args.seconds,
            "connections": args.connections,
            "requests": total,
            "non_2xx": non_2xx,
            "per_s": round((total - non_2xx) / args.seconds, 1),
            "events_stored": after - before,
            "asks_completed_meanwhile": len(asks),
        }
        print("feedback", feedback, flush=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "database": "postgresql" if settings.database_url else "sqlite",
        "collection": args.collection,
        "workers": args.workers,
        "search": search,
        "feedback": feedback,
    }
    if code != REPO:  # another checkout's figures are for comparison: printed, not recorded as this one's
        print(json.dumps(result))
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    write_table(KEY, HEADING, render_table(result))


def render_table(result: dict) -> str:
    s, f = result["search"], result["feedback"]
    return "\n".join(
        [
            f"Machine: {result['machine']['cpus']} CPUs ({result['machine']['processor']}); {result['database']}, collection `{result['collection']}`, `citeloop serve --workers {result.get('workers', 1)}`.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| `POST /v1/search` p50 / p95, end to end ({s['requests']} sequential requests) | {s['p50_ms']} ms / {s['p95_ms']} ms |",
            f"| feedback writes/s sustained (wrk, {f['connections']} connections, {f['seconds']} s, asks running) | {f['per_s']} |",
            f"| acknowledged feedback / events stored / non-2xx | {f['requests'] - f['non_2xx']} / {f['events_stored']} / {f['non_2xx']} |",
            f"| answers completed during the feedback run | {f['asks_completed_meanwhile']} |",
        ]
    )


if __name__ == "__main__":
    main()
