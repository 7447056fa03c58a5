"""Test settings: a fixed Hypothesis profile so the suite's duration is predictable."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "hetsched", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("hetsched")


# -- the daemon, shared by the integration tests of the daemon and the client ----------------------

import pytest  # noqa: E402
from daemon_process import add_model, add_zoo_model, string_model  # noqa: E402

from hetsched.daemon.process import DaemonProcess  # noqa: E402

ADMIN = {"x-admin-key": "s3cret"}
MAX_BODY_BYTES = 8 << 20


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    """One `hetsched serve` for the session: zoo models autocompleted, configured, partitioned."""
    repository = tmp_path_factory.mktemp("repository")
    add_zoo_model(repository, "lenet", "lenet5", config=(
        'max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n'))
    add_zoo_model(repository, "multi", "multi-io")
    add_zoo_model(repository, "control", "control-flow")
    add_zoo_model(repository, "googlenet", "googlenet", config=(
        'parameters { key: "hetsched.ratios" value { string_value: "0.5,0.5" } }\n'))
    add_zoo_model(repository, "slow", "resnet18", config=(
        'max_batch_size: 0\nparameters { key: "hetsched.max_queue" value { string_value: "2" } }\n'
        'parameters { key: "hetsched.warmup" value { string_value: "4" } }\n'))
    add_model(repository, "text", string_model())
    server = DaemonProcess(repository, "--admin-header", "x-admin-key=s3cret", "--max-body-bytes",
                           str(MAX_BODY_BYTES), perfmodel_dir=tmp_path_factory.mktemp("perfmodels"))
    server.repository = repository  # type: ignore[attr-defined]
    yield server
    assert server.stop() == 0, server.text()[-3000:]
