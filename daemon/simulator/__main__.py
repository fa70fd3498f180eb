"""``python -m daemon.simulator``: the simulator until SIGTERM/SIGINT."""

import sys

from daemon.simulator.server import main

sys.exit(main())
