"""`python -m router` is the same as the `whaleray-router` console script."""

from router.cli import main

raise SystemExit(main())
