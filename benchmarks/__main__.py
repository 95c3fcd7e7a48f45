"""Run the benchmarks: `python -m benchmarks [proxy|features|calls|induction|rerank|rerank-mode|chaos ...]` (all by default).

Each benchmark is its own script and prints its own figures; arguments after `--` go to each.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "proxy": "proxy_overhead.py",
    "features": "feature_costs.py",
    "calls": "call_counts.py",
    "induction": "induction_cost.py",
    "rerank": "rerank_cost.py",
    "rerank-mode": "rerank_mode.py",
    "chaos": "chaos.py",
}


def main(argv: list[str]) -> int:
    names, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(SCRIPTS)}", file=sys.stderr
        )
        return 2
    status = 0
    for name in names or list(SCRIPTS):
        print(f"== {name} ==", flush=True)
        status |= subprocess.run([sys.executable, str(HERE / SCRIPTS[name]), *extra]).returncode
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
