"""``python -m app``: the same entry point as the ``lowerplane-bitbucket`` console script."""

from app.cli import main

raise SystemExit(main())
