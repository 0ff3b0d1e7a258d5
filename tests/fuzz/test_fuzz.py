"""Fuzzing: requests generated from the service's own OpenAPI schema (schemathesis), sent over
real HTTP to a live server, as a developer (token from /api-token-auth/) and as an enrolled client
(``Authorization: Client <credential>``); every answer must be documented (status, media type,
headers, body) and none may be a 5xx or a broken connection.

Each operation gets a fresh scene (tests/fuzz/conftest.py) and FMA_FUZZ_EXAMPLES examples drawn
from four kinds: valid and invalid requests (schemathesis' positive and negative modes), with
generated path parameters or with the scene's real rows. The suite's run is derandomized (the
same requests every time), 10 examples per operation and caller, about 40 s on the 2-core
development machine; it runs only in the SQLite pass of ``make test``. Its 840 requests reach every
(operation, status) pair that 20 examples per operation reached (119 of them, 2026-12-06). A
longer random run (``make fuzz``):

    FMA_FUZZ_EXAMPLES=60 FMA_FUZZ_SEED=random FMA_FUZZ_REPORT=fuzz-report \\
        .venv/bin/python -m pytest tests/fuzz -p no:cacheprovider

It prints each operation's seed; ``FMA_FUZZ_SEED=<seed> FMA_FUZZ_OPERATIONS='<regex of the
operation>'`` replays its draws (the scene's ids may differ). Every distinct failure is listed
at the end (and in ``fuzz-report-<role>.txt`` and ``.json``) with its curl command and, for a
5xx, the server's traceback.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup

from .conftest import TIMEOUT, Scene

EXAMPLES = int(os.environ.get("FMA_FUZZ_EXAMPLES", "10"))
SEED = os.environ.get("FMA_FUZZ_SEED", "")
REPORT = os.environ.get("FMA_FUZZ_REPORT", "")
ONLY = re.compile(os.environ.get("FMA_FUZZ_OPERATIONS", ""))  # e.g. "POST .*/revoke_client/", to replay one
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]


class ServerErrors(logging.Handler):
    """The tracebacks the live server logs (``django.request``) while a request is answered."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            frames = traceback.extract_tb(record.exc_info[2])[-3:]
            where = " <- ".join(
                f"{f.filename.rsplit('/src/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(frames)
            )
            self.seen.append(f"{record.exc_info[0].__name__}: {record.exc_info[1]} at {where}"[:600])

    def take(self) -> list[str]:
        seen, self.seen = self.seen, []
        return seen


@dataclass
class Report:
    """One caller's run: counts, and each distinct failure (caller, operation, status, checks) once,
    with how often it happened, an example's curl command and the server's traceback."""

    requests: int = 0
    server_errors: int = 0
    mismatches: int = 0
    failures: dict[tuple[str, ...], dict[str, Any]] = field(default_factory=dict)

    def add(
        self,
        *,
        role: str,
        label: str,
        status: int,
        titles: list[str],
        detail: str,
        curl: str,
        tracebacks: list[str],
    ) -> None:
        key = (role, label, str(status), *titles)
        if key not in self.failures:
            self.failures[key] = {
                "role": role,
                "operation": label,
                "status": status,
                "checks": titles,
                "detail": detail[:800],
                "curl": curl[:1500],
                "traceback": tracebacks[:1],
                "count": 0,
            }
        self.failures[key]["count"] += 1

    def summary(self) -> str:
        lines = [
            f"{self.requests} requests, {self.server_errors} answered 5xx, "
            f"{self.mismatches} not as the schema says; {len(self.failures)} distinct failures"
        ]
        for failure in self.failures.values():
            lines.append(
                f"- [{failure['role']}] {failure['operation']} -> {failure['status']} "
                f"({', '.join(failure['checks'])}; {failure['count']}x): {failure['detail'][:300]}"
            )
            lines += [f"    {line}" for line in failure["traceback"]]
            lines.append(f"    {failure['curl'][:400]}")
        return "\n".join(lines)


def hypothesis_settings() -> Callable:
    """Derandomized unless FMA_FUZZ_SEED is set (``random``: a new seed each run, printed)."""
    chosen = {
        "max_examples": EXAMPLES,
        "deadline": None,
        "database": None,
        "phases": [Phase.explicit, Phase.generate],  # failures are collected, not shrunk
        "suppress_health_check": list(HealthCheck),
        "derandomize": not SEED,
        "print_blob": False,
    }
    return settings(**chosen)


def strategy(operation: Any, scene: Scene) -> st.SearchStrategy:
    """Valid and invalid requests, with generated path parameters and with the scene's real rows."""
    names = re.findall(r"{(\w+)}", operation.path)
    real = {name: value for name, value in scene.path_parameters(operation.path).items() if name in names}
    kinds = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)]
    if real:
        kinds.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=real))
        kinds.append(operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=real))
    return st.one_of(kinds)


def fuzz_operation(
    *,
    operation: Any,
    role: str,
    server: str,
    auth: dict[str, str],
    scene: Scene,
    report: Report,
    errors: ServerErrors,
) -> None:
    session = requests.Session()
    previous = ["(none)"]

    @hypothesis_settings()
    @given(case=strategy(operation, scene))
    def examples(case: Any) -> None:
        curl = case.as_curl_command(headers={"Authorization": "<redacted>"})
        try:
            # One connection per request: a generated request that garbles its own connection (seen
            # twice in 12,600, on pytest-django's WSGI server) must not make the next one fail.
            response = case.call(
                base_url=server,
                session=session,
                headers={**auth, "Connection": "close"},
                timeout=TIMEOUT,
                allow_redirects=False,
            )
        except requests.RequestException as error:  # the server broke the connection: a failure too
            report.requests += 1
            report.add(
                role=role,
                label=operation.label,
                status=0,
                titles=["Connection error"],
                detail=f"{error}; the request before it: {previous[0]}",
                curl=curl,
                tracebacks=errors.take(),
            )
            session.close()
            return
        previous[0] = curl
        report.requests += 1
        tracebacks = errors.take()
        if response.status_code >= 500:
            report.server_errors += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=auth)
        except FailureGroup as group:
            if response.status_code < 500:
                report.mismatches += 1
            report.add(
                role=role,
                label=operation.label,
                status=response.status_code,
                titles=sorted({failure.title for failure in group.exceptions}),
                detail=" | ".join(sorted({failure.message.strip() for failure in group.exceptions})),
                curl=curl,
                tracebacks=tracebacks,
            )

    if SEED:
        seed = random.randrange(2**32) if SEED == "random" else int(SEED)
        print(f"{role} {operation.label}: FMA_FUZZ_SEED={seed}")
        examples = hypothesis.seed(seed)(examples)
    examples()


@pytest.mark.parametrize("role", ["developer", "client"])
def test_every_answer_is_documented_and_none_is_a_5xx(role, server, developer_token, make_scene):
    raw = requests.get(server + "/api/schema/", headers={"Accept": "application/json"}, timeout=TIMEOUT)
    assert raw.status_code == 200, raw.text
    schema = schemathesis.openapi.from_dict(raw.json())
    report, errors = Report(), ServerErrors()
    logging.getLogger("django.request").addHandler(errors)
    scene = None
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            if not ONLY.search(operation.label):
                continue
            if (
                scene is None or operation.method.upper() != "GET"
            ):  # reads share a scene; writes get their own
                scene = make_scene()
            credential = (
                f"Token {developer_token}" if role == "developer" else f"Client {scene.client_credential}"
            )
            fuzz_operation(
                operation=operation,
                role=role,
                server=server,
                auth={"Authorization": credential},
                scene=scene,
                report=report,
                errors=errors,
            )
            if operation.method.upper() != "GET":
                scene = None
    finally:
        logging.getLogger("django.request").removeHandler(errors)
    if REPORT:
        with open(f"{REPORT}-{role}.txt", "w") as out:
            out.write(f"[{role}] {report.summary()}\n")
        with open(f"{REPORT}-{role}.json", "w") as out:
            json.dump(
                {
                    **{k: v for k, v in vars(report).items() if k != "failures"},
                    "failures": list(report.failures.values()),
                },
                out,
                indent=1,
            )
    print(report.summary())
    assert not report.failures, report.summary()
