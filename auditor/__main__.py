"""`python -m auditor` is `flo-audit`."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
