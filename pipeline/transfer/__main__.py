import sys

from pipeline import cli
from pipeline.transfer.cli import main

sys.exit(cli.run(main))
