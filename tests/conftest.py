import os
import random

import numpy as np
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # under pytest-xdist (scripts/test.sh: one worker per core) each worker keeps to one
    # thread, and so do the processes it starts (notebook kernels): more would oversubscribe
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist: the tests marked ``slow`` go first, so that the last tests the
    workers run are short ones (no worker left alone with a long test at the end).

    With ``--dist loadgroup``: give each test marked ``xdist_group`` the ``@group`` suffix
    that xdist's scheduler groups by. pytest-xdist 3.8 sets it by assigning ``item._nodeid``,
    which pytest 9.2 no longer reads (``nodeid`` comes from ``item._id``), so without this
    the tests sharing a module-scoped export would run on several workers, each exporting
    again."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        groups = {
            str(m.args[0] if m.args else m.kwargs.get("name", "default"))
            for m in item.iter_markers("xdist_group")
        }
        if groups and "@" not in item.nodeid.rsplit("]", 1)[-1]:
            from _pytest.nodes import coerce_node_id

            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(sorted(groups))}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
