"""Synthetic page generation rate: A4 pages per second on this machine (goal: >= 5 pages/s, i.e. 0.2 s a page).

    python benchmarks/synthetic_pages.py [--pages 16]
"""

from __future__ import annotations

import argparse
import platform
import time

from llm_perf_opt.data.synthetic import generate_pages

A4_150_DPI = [1240, 1754]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=16)
    args = parser.parse_args()
    generate_pages(1, [A4_150_DPI])  # warm the font cache
    start = time.perf_counter()
    generate_pages(args.pages, [A4_150_DPI], seed=11)
    seconds = time.perf_counter() - start
    machine = f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    print(f"{args.pages / seconds:.1f} A4 pages/s ({seconds / args.pages * 1e3:.0f} ms a page; goal <= 200 ms) "
          f"on {machine}")


if __name__ == "__main__":
    main()
