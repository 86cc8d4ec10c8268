import os
import sys
from pathlib import Path

# Tests import the packages from this checkout even when it is not installed.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Keep Ray and torch from fighting over the two cores of small machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")
