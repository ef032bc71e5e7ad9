"""Check a sweep on one store: GPU leases never overlapped on a GPU, each child names its GPU, and each
child's decode TPOT against the run of the same configuration alone (runs named `alone-seed<N>`), with
the spread of the alone runs (identical work, other seeds) as the run-to-run noise. Then a comparison
over the sweep's children (`compare select.sweep=<parent>`).

    python benchmarks/sweep_check.py TRACKING_URI SWEEP_DIR
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow


def leases(sweep_dir: Path) -> list[dict]:
    jobs = [json.loads(p.read_text()) for p in sorted((sweep_dir / ".jobs").glob("*.json"))]
    held = sorted((j["gpu_lease"]["from"], j["gpu_lease"]["to"], j["gpu_lease"]["gpu"], j["job"]) for j in jobs
                  if j.get("gpu_lease"))
    base = held[0][0] if held else 0.0
    for start, end, gpu, job in held:
        print(f"job {job}: GPU {gpu} leased from +{start - base:.1f} s to +{end - base:.1f} s")
    overlaps = [(a[3], b[3]) for a, b in zip(held, held[1:]) if a[2] == b[2] and b[0] < a[1]]
    print("leases on one GPU never overlap" if not overlaps else f"OVERLAPPING leases: {overlaps}")
    return jobs


def main(uri: str, sweep_dir: str) -> int:
    folder = Path(sweep_dir)
    jobs = leases(folder)
    parent = json.loads((folder / "sweep.json").read_text())["parent_run_id"]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True)
    kids = runs[runs["tags.mlflow.parentRunId"] == parent]
    alone = runs[runs["tags.mlflow.runName"].fillna("").str.startswith("alone-seed")]
    tpot = "metrics.decode/tpot_ms_p50"
    spread = (alone[tpot].max() - alone[tpot].min()) / alone[tpot].mean()
    print(f"alone runs, decode TPOT p50: {', '.join(f'{v:.3f}' for v in alone[tpot])} ms (spread {spread:.1%})")
    worst = 0.0
    for _, kid in kids.iterrows():
        seed = kid["params.seed"]
        twin = alone[alone["params.seed"] == seed].iloc[0]
        ratio = kid[tpot] / twin[tpot]
        worst = max(worst, abs(ratio - 1))
        print(f"child seed={seed} GPU {kid['tags.llm_perf_opt.gpu']} ({kid['status']}): TPOT p50 {kid[tpot]:.3f} ms, "
              f"alone {twin[tpot]:.3f} ms, ratio {ratio:.3f}")
    print(f"largest child/alone TPOT difference {worst:.1%} vs alone-run spread {spread:.1%}; "
          f"{len(kids)} children, {sum(j['exit_code'] == 0 for j in jobs)} jobs exited 0")
    done = subprocess.run([sys.executable, "-m", "llm_perf_opt", "compare", f"tracking.uri={uri}",
                           f"select.sweep={parent}", "tracking.enabled=false", f"hydra.run.dir={folder}/compare"],
                          capture_output=True, text=True, check=False)
    print(done.stdout[-4000:], done.stderr[-1500:] if done.returncode else "")
    return done.returncode


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
