"""``python -m audit_core.cli``: the ``workflow-audit`` command without its console script."""

from audit_core.cli import main

raise SystemExit(main())
