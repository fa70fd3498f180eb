"""`python -m daemon` is the `roomtranslate` command."""

from daemon.cli import main

raise SystemExit(main())
