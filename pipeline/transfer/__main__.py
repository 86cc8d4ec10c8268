import sys

from pipeline.transfer.cli import main

sys.exit(main())
