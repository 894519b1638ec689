"""API server memory (a script, not a test): resident memory of one `citeloop serve` process after it has served
a search and then an answer from the same collection, so both the search and the answer path hold it.

    python bench/bench_memory.py --data-dir var --collection python-docs [--code CHECKOUT]

`--code` serves another checkout of citeloop (e.g. an older commit in a git worktree) over the same data, which is
how a change's memory effect is measured; its database must be at a schema that checkout knows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import citeloop  # noqa: E402,F401
from bench.server import admin_key, rss_mib, running_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO / "var")
    parser.add_argument("--collection", default="python-docs")
    parser.add_argument("--code", type=Path, default=REPO, help="Checkout whose api.app serves.")
    args = parser.parse_args()

    import httpx

    code = args.code.resolve()
    key = admin_key(args.data_dir, code)
    with running_server(args.data_dir, code=code) as (base, server):
        figures = {"ready": rss_mib(server.pid)}
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=600) as http:
            http.post("/v1/search", json={"collection": args.collection, "query": "sort a list in place"}).raise_for_status()
            figures["after_search"] = rss_mib(server.pid)
            http.post("/v1/ask", json={"collection": args.collection, "question": "How do I sort a list in place?"}).raise_for_status()
            figures["after_search_and_ask"] = rss_mib(server.pid)
    print(json.dumps({"code": str(args.code), "collection": args.collection, "rss_mib": {k: round(v, 1) for k, v in figures.items()}}))


if __name__ == "__main__":
    main()
