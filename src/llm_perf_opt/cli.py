"""`llm-perf-opt <command> [hydra overrides]`: hands the overrides to the command's Hydra main.

Commands: `profile` (the stage profiler, conf/config.yaml) and `compare` (statistical comparison of
tracked runs, conf/compare.yaml). Overrides may also arrive the way `mlflow run` passes them:
`--overrides "a=1 b=2"` (the MLproject's declared parameter, split like a shell would) and
`--key value` (MLflow's form for undeclared `-P key=value`), both turned into Hydra's `key=value`.
"""

from __future__ import annotations

import shlex
import sys

# Hydra's own flags keep their meaning; every other `--key value` pair becomes `key=value`.
_HYDRA_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--resolve", "--package", "-p",
                "--run", "-r", "--multirun", "-m", "--shell-completion", "-sc", "--config-path", "-cp",
                "--config-name", "-cn", "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}


def expand_overrides(args: list[str]) -> list[str]:
    expanded: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--overrides" and index + 1 < len(args):
            expanded.extend(shlex.split(args[index + 1]))
            index += 2
        elif arg.startswith("--overrides="):
            expanded.extend(shlex.split(arg.split("=", 1)[1]))
            index += 1
        elif arg.startswith("--") and arg not in _HYDRA_FLAGS and "=" not in arg and index + 1 < len(args):
            expanded.append(f"{arg[2:]}={args[index + 1]}")
            index += 2
        else:
            expanded.append(arg)
            index += 1
    return expanded


COMMANDS = {"profile": "llm_perf_opt.runners.llm_profile_runner",
            "compare": "llm_perf_opt.runners.compare_runs"}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        known = ", ".join(COMMANDS)
        print(f"usage: llm-perf-opt {{{known}}} [hydra overrides ...]\n"
              "  e.g. llm-perf-opt profile model.preset=full profiling.repeats=5", file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    import importlib

    module = importlib.import_module(COMMANDS[argv[0]])
    sys.argv = [f"llm-perf-opt {argv[0]}", *expand_overrides(argv[1:])]
    module.main()


if __name__ == "__main__":
    main()
