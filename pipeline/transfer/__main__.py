from pipeline import exits
from pipeline.transfer.cli import main

exits.end(exits.run(main))
