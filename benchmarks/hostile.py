"""Writes under a keyless crowd: the write rate of one keyed client while 16 keyless clients (other
processes, nice 19) hammer the reads, against its rate alone, in interleaved pairs of 1 s windows.

    .venv/bin/python benchmarks/hostile.py            # 24 pairs per mix (48 when the first 24 are under 90%)
    .venv/bin/python benchmarks/hostile.py --pairs 6  # a quicker look

Target: >= 90% for both mixes (the read mix: clouds, /publications, entities, the dashboard page;
the other mix: probes, docs, a 404, static files). Prints a table and writes
benchmarks/results-hostile.json. The test suite asserts only that writes keep flowing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.crowd import OTHER_MIX, READ_MIX, fill, hammer  # noqa: E402
from tests.frontend_support import running_stack, start_frontend  # noqa: E402
from tests.test_hostile import shipped_limits  # noqa: E402

TARGET = 0.90


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--output", type=Path, default=HERE / "results-hostile.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        env = {"INGEST_READ_RATE_LIMIT": "20/second;600/minute", "INGEST_ANON_RATE_LIMIT": ""}
        with running_stack(Path(tmp), "--workers", "1", "--flush-interval", "0.3", workers=2,
                           frontend_env=env) as (backend, filler):
            fill(backend, filler)
            for name, paths in (("read mix", READ_MIX), ("other mix", OTHER_MIX)):
                frontend = start_frontend(Path(tmp), backend.env, workers=2, env=shipped_limits())
                try:
                    w = hammer(backend, frontend, paths, pairs=args.pairs, more_if_below=TARGET)
                finally:
                    frontend.stop()
                rows.append({"mix": name, "pairs": w.pairs, "alone_per_s": w.alone[0] / w.alone[1],
                             "loaded_per_s": w.loaded[0] / w.loaded[1], "ratio": w.ratio,
                             "reads_per_s": w.reads / w.loaded[1], "ok": w.ratio >= TARGET})
    print(f"{'mix':<10} {'pairs':>5} {'alone/s':>8} {'loaded/s':>9} {'ratio':>7} {'reads/s':>8}  "
          f"target >= {TARGET:.0%}")
    for r in rows:
        print(f"{r['mix']:<10} {r['pairs']:>5} {r['alone_per_s']:>8.0f} {r['loaded_per_s']:>9.0f} {r['ratio']:>7.1%} "
              f"{r['reads_per_s']:>8.0f}  {'ok' if r['ok'] else 'FAIL'}")
    args.output.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "target": TARGET, "rows": rows},
                                      indent=2) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
