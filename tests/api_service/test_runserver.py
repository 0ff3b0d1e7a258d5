"""``manage.py runserver``, as Django developers work locally: the admin, the API and rounds under it
(issue 22 item 5; the README's "Embedded" section says how)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from fma_client import Client, Developer

from .conftest import clean_environment, free_port

MANAGE = Path(__file__).resolve().parents[2] / "api_service" / "manage.py"


def manage(env: dict[str, str], *command: str) -> None:
    done = subprocess.run(
        [sys.executable, str(MANAGE), *command], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_runserver_serves_the_admin_and_the_api_and_runs_rounds(tmp_path):
    port = free_port()
    env = clean_environment(tmp_path, FMA_DEVELOPMENT="1", DJANGO_SUPERUSER_PASSWORD="pw-for-tests")
    manage(env, "migrate", "--noinput")
    manage(env, "createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com")
    log = (tmp_path / "runserver.log").open("w")
    process = subprocess.Popen(
        [sys.executable, str(MANAGE), "runserver", f"127.0.0.1:{port}"],  # with its autoreloader
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the reloader's child goes with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "runserver.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "runserver.log").read_text()
            try:
                requests.get(url + "/api/v1/", timeout=10)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        assert requests.get(url + "/admin/login/", timeout=10).status_code == 200
        assert (
            requests.get(url + "/static/admin/css/base.css", timeout=10).status_code == 200
        )  # no collectstatic

        with Developer.login(url, "admin", "pw-for-tests", quiet=True) as dev:
            experiment = dev.create_experiment(
                {
                    "name": "under-runserver",
                    "tensor_spec": [{"name": "w", "dtype": "float32", "shape": [2]}],
                    "round_policy": {"policy": "all_clients"},
                    "enrollment": "open",
                }
            )
            with Client.enroll(url, experiment.id, quiet=True) as client:
                client.push({"w": np.array([1.0, 2.0], np.float32)}, num_examples=3)
                weights, aggregate = client.wait_for_new_model(timeout=120, poll_interval=0.2)
            np.testing.assert_array_equal(weights["w"], [1.0, 2.0])
            assert dev.aggregate(aggregate).round_number == 1  # the in-process runner, in runserver's process
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in its terminal: the reloader and its child
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("runserver did not stop on Ctrl-C")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            log.close()
