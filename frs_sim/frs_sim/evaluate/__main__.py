"""``python -m frs_sim.evaluate``: see :mod:`frs_sim.evaluate.cli`."""

from frs_sim.evaluate.cli import main

raise SystemExit(main())
