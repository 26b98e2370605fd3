"""pytest --nbmake runs the tutorials with small parameters (see each notebook's first cell)."""

import os

os.environ["SXTLAB_FAST"] = "1"
