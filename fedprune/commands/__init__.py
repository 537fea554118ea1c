"""One module per ``fedprune`` subcommand; each has ``add_parser(sub)`` and the command's function.

``COMMANDS`` is the order in which ``fedprune --help`` lists them.
"""

from __future__ import annotations

from fedprune.commands import config, deploy, report, simulate, sweep, train

COMMANDS = (simulate, train, sweep, report, deploy, config)
