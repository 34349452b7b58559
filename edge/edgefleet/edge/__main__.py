"""``python -m edgefleet.edge --config FILE``: the lean launcher (see launcher.py)."""

from edgefleet.edge.launcher import main

raise SystemExit(main())
