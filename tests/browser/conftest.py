import pytest


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Expose each phase's report on the test item (`item.rep_call`), for fixtures that act on failures."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
