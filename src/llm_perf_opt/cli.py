"""`llm-perf-opt <command> [hydra overrides]`: hands the overrides to the command's Hydra main.

Commands: `profile` (the stage profiler, conf/config.yaml), `compare` (statistical comparison of
tracked runs, conf/compare.yaml) and `log-run RUN_DIR ...` (log run directories to MLflow afterwards;
plain arguments, not Hydra overrides: `llm-perf-opt log-run --help`). Overrides may also arrive the
way `mlflow run` passes them: `--overrides "a=1 b=2"` (the MLproject's declared parameter, split like a
shell would) and `--key value` (MLflow's form for undeclared `-P key=value`), both turned into Hydra's `key=value`.

Bad input is one `error: ...` line on stderr and exit status 2, never a traceback: an override Hydra or
OmegaConf rejects while composing (`model.dtype=fp8`, `profiling.repeats=abc`, `model=nosuch`; see
`llm_perf_opt.config.run_hydra_main`), and a value `llm_perf_opt.config.validate` rejects (an
`InputError`) in the runners. `HYDRA_FULL_ERROR=1` keeps Hydra's own reporting (full stack traces).
"""

from __future__ import annotations

import sys

from llm_perf_opt.config import expand_overrides

__all__ = ["COMMANDS", "expand_overrides", "main"]

COMMANDS = {"profile": "llm_perf_opt.runners.llm_profile_runner",
            "compare": "llm_perf_opt.runners.compare_runs",
            "log-run": "llm_perf_opt.runners.log_run"}
PLAIN_COMMANDS = {"log-run"}  # argparse commands: their arguments pass through unchanged


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        known = ", ".join(COMMANDS)
        print(f"usage: llm-perf-opt {{{known}}} [hydra overrides ...]\n"
              "  e.g. llm-perf-opt profile model.preset=full profiling.repeats=5\n"
              "       llm-perf-opt log-run RUN_DIR [RUN_DIR ...] [--tracking-uri URI] [--experiment NAME]",
              file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    import importlib

    module = importlib.import_module(COMMANDS[argv[0]])
    args = argv[1:] if argv[0] in PLAIN_COMMANDS else expand_overrides(argv[1:])
    sys.argv = [f"llm-perf-opt {argv[0]}", *args]
    module.main()


if __name__ == "__main__":
    main()
