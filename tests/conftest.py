"""Every test starts under surge's own default names (``surge_logs``, ``$SURGE_GLOBAL_SEED``), whether or not
an earlier test module imported ``surge.lightning`` (which switches the process to Lightning's names; see
surge.dialect). Tests of Lightning's names switch inside the test (``dialect.using(dialect.LIGHTNING)``)."""
import pytest

from surge import dialect


@pytest.fixture(autouse=True)
def _surge_names():
    with dialect.using(dialect.SURGE):
        yield
