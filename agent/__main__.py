"""``python -m agent`` is the chainwatch command."""

import sys

from agent.cli import main

sys.exit(main())
