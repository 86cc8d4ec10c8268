import sys

from pipeline import exits
from pipeline.transfer.cli import main

sys.exit(exits.run(main))
