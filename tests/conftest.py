import os
import sys
from pathlib import Path

import pytest

# Tests import the packages from this checkout even when it is not installed.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))



@pytest.fixture(scope="module")
def ray_cluster(request):
    """Local Ray on 2 CPUs for one test module. A module that needs the dashboard (it serves
    ray.util.state) sets ``RAY_DASHBOARD = True``; it costs a few seconds otherwise spared."""
    import ray
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"  # the default costs seconds per run
    ray.init(num_cpus=2, include_dashboard=getattr(request.module, "RAY_DASHBOARD", False), log_to_driver=False)
    yield
    ray.shutdown()
