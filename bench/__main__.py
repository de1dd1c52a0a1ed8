"""``python -m tritonvision.bench [options]``: the same as ``tritonvision bench [options]``."""

from __future__ import annotations

import sys

from tritonvision.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
