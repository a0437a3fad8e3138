"""``python -m hwsbs``: the ``hwsbs`` command (e.g. under ``torchrun ... -m hwsbs search``)."""

from __future__ import annotations

import sys

from hwsbs.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
