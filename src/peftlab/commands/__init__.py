"""CLI subcommands, one module per area; each exposes `register(app)`.

Command bodies import heavy libraries lazily so `peftlab --help` stays instant.
"""

from peftlab.commands import analysis, data, measure, study, train
from peftlab.commands import adalora  # AdaLoRA (issue 9)

COMMAND_MODULES = [data, train, measure, analysis, study]
COMMAND_MODULES.append(adalora)  # AdaLoRA (issue 9)
