"""``python -m brats_utils ...``: see :mod:`brats_utils.cli`."""

from brats_utils.cli import main

raise SystemExit(main())
