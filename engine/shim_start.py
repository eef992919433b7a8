"""What the engine runs: ``python -I -S engine/shim_start.py RUN_DIR ... -- COMMAND``.

Python compiles a script run by path on every start, but caches a module it imports:
this file is a few lines to compile, and :mod:`engine.shim` (six hundred) comes from its
``__pycache__``. Every run waits for the shim's start-up before its first instruction.
"""

import os
import sys

# Appended, not prepended: the standard library still wins over any file beside this one.
sys.path.append(os.path.dirname(os.path.abspath(__file__)))

from shim import main  # noqa: E402

sys.exit(main())
