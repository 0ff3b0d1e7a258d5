"""The lifecycle from the developer's side: ``Developer.pause/resume/stop``, ``fma pause|resume|stop``, and
what a client sees when the experiment has ended."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fma_client import Client, ConflictError, Developer


@pytest.fixture
def dev(server, developer, dev_token):
    with Developer(server, token=dev_token, quiet=True) as session:
        yield session


def test_a_developer_pauses_resumes_and_stops_and_a_client_is_then_refused(
    dev, experiment, enrollment_token, run_round
):
    paused = dev.pause(experiment.pk, reason="relabelling")
    assert (paused.state, paused.state_reason, paused.allow_aggregation) == ("paused", "relabelling", False)
    with Client.enroll(dev.url, experiment.pk, enrollment_token=enrollment_token, quiet=True) as client:
        model = client.pull().weights
        client.push({name: value + 1 for name, value in model.items()}, num_examples=3)  # paused: still taken
        assert dev.resume(experiment.pk).state == "collecting"
        run_round(experiment.pk)
        stopped = dev.stop(experiment.pk, reason="enough")
        assert (stopped.state, stopped.state_reason) == ("stopped", "stopped by dev: enough")
        with pytest.raises(
            ConflictError, match="is stopped: stopped by dev: enough; it takes no more updates"
        ):
            client.push({name: value + 2 for name, value in model.items()}, num_examples=3)
        np.testing.assert_array_equal(client.pull().weights["bias"], np.ones(3, np.float32))  # still served
    with pytest.raises(ConflictError, match="it cannot be collecting again"):
        dev.resume(experiment.pk)


def test_the_cli_pauses_and_stops(fma, server, dev_token, experiment):
    status, out, _ = fma(
        "--url", server, "--token", dev_token, "pause", experiment.pk, "--reason", "new data"
    )
    assert (status, out.strip()) == (0, f"Experiment {experiment.pk} is paused (new data)")
    status, out, _ = fma("--url", server, "--token", dev_token, "experiments", "list")
    assert out.splitlines()[0].split()[:4] == ["ID", "NAME", "AGGREGATOR", "STATE"]
    assert out.splitlines()[1].split()[:4] == [str(experiment.pk), "mnist", "fedavg", "paused"]
    status, out, _ = fma("--url", server, "--token", dev_token, "--json", "stop", experiment.pk)
    assert (status, json.loads(out)["state"]) == (0, "stopped")
    status, _, err = fma("--url", server, "--token", dev_token, "resume", experiment.pk)
    assert status == 1
    assert "is stopped" in err
