"""CLI subcommands, one module per area; each exposes `register(app)`.

Command bodies import heavy libraries lazily so `peftlab --help` stays instant.
"""

from peftlab.commands import adalora, analysis, bench, data, measure, study, sweep, train

COMMAND_MODULES = [data, train, measure, analysis, study, sweep, bench, adalora]
