"""Where the checkout's files are: the Hydra config directory and the project root (for the git sha).

The package runs from a source checkout (`pip install -e .`): `conf/` sits beside `src/`.
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = str(PROJECT_ROOT / "conf")
