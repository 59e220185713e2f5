"""What a JSON body costs to parse, by its structure: orjson holds the GIL while it parses, on a worker
thread as well, so the parse time of one body is how long it can hold the event loop. Measured on
10 MB bodies of the shapes an inference request may take, beside the cost of the structure pre-scan
the service makes before parsing (`service.v2.codec.check_structure`): the figures behind
MAX_JSON_STRUCTURES. Best of 3 per body; writes bench/results/json_parse.json.

    python -m bench.json_parse
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.provenance import git_state
from service.v2.codec import MAX_JSON_STRUCTURES, ProtocolError, check_structure

RESULT = Path(__file__).resolve().parent / "results" / "json_parse.json"
HEAD = b'{"inputs":[{"name":"z","datatype":"FP32","shape":[0,32],"data":['
TAIL = b"]}]}"
ROUNDS = 3


def bodies() -> dict[str, bytes]:
    floats = np.random.default_rng(0).random(1_000_000)
    return {
        "flat floats (1M)": HEAD + ",".join(f"{x:.6f}" for x in floats).encode() + TAIL,
        "flat zeros (5M)": HEAD + b",".join([b"0"] * 5_000_000) + TAIL,
        "nested rows of 28 (80k lists)": HEAD + b",".join([b"[" + b",".join([b"0.5"] * 28) + b"]"] * 80_000) + TAIL,
        "nested empty lists [[[[]]]] (4.7M lists)": HEAD + b",".join([b"[[[[]]]]"] * 1_165_062) + TAIL,
        "empty objects (3.3M)": HEAD + b",".join([b"{}"] * 3_300_000) + TAIL,
        "object keys (800k)": b'{"parameters":{' + b",".join(b'"k%d":0' % i for i in range(800_000)) + b"}}",
        # the header's own lists, objects and keys (10) and the rest in empty lists: just within the cap
        "at the cap: empty lists": HEAD + b",".join([b"[]"] * (MAX_JSON_STRUCTURES - 10)) + TAIL,
    }


def best_seconds(fn: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        began = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - began)
    return best


def refused(body: bytes) -> bool:
    try:
        check_structure(body)
    except ProtocolError:
        return True
    return False


def main() -> None:
    rows = []
    for name, body in bodies().items():
        row = {
            "body": name,
            "megabytes": round(len(body) / 1e6, 2),
            "parse_ms": round(best_seconds(lambda body=body: orjson.loads(body)) * 1000, 1),
            "pre_scan_ms": round(best_seconds(lambda body=body: refused(body)) * 1000, 2),
            "refused": refused(body),
        }
        rows.append(row)
        print(
            f"{name:42s} {row['megabytes']:6.2f} MB  parse {row['parse_ms']:7.1f} ms  "
            f"pre-scan {row['pre_scan_ms']:6.2f} ms  {'refused' if row['refused'] else 'parsed'}"
        )
    RESULT.write_text(
        json.dumps(
            {"max_json_structures": MAX_JSON_STRUCTURES, "rounds": ROUNDS, "rows": rows, "code": git_state()}, indent=2
        )
        + "\n"
    )
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
