"""Fuzzing the experiment's lifecycle, evaluations, secure rounds and the settings that drive them.

The schema-driven fuzzer (test_fuzz.py) reaches these endpoints with generated path parameters and
bodies drawn from the schema, which says little about them: ``secure_round/{round_id}/{stage}/``
takes any JSON object, the settings ``asynchronous``, ``privacy``, ``secure_aggregation``,
``evaluation`` and ``finish_when`` are free JSON, and a round id or an aggregate is real only in a
scene that has one. Here each example is a fresh world over real HTTP (``conftest.server``): the
developer's experiment with a declared evaluation metric and an aggregate, her secure experiment
with three enrolled clients and an open secure round, and another developer's experiment with its
own client; and a sequence of requests drawn from what those endpoints take: every state to every
state, evaluations of real, foreign and missing aggregates, settings built from valid ones with one
value replaced (wrong types, booleans for numbers, NaN/Infinity, huge numbers, unknown keys), the
secure stages in any order with real and mangled payloads, masked inputs of every length; sent as
any caller, to any tenant's experiment, as JSON, malformed JSON, other content types, and retried.

Every answer must hold:

- never a 5xx, never a broken connection;
- a refusal (4xx) is JSON that says what is wrong (``detail``, ``code``), and changes nothing:
  the experiments, evaluations, secure rounds and events read the same before and after (a stage
  request refused with 409 ``experiment_ended`` may fail the ended experiment's open round, as
  documented in fma_django.secure_rounds);
- another tenant's experiment answers exactly as an experiment that does not exist (same status and
  code): no 403 that says it exists;
- a retry of an accepted request is accepted again and changes nothing more;
- after every request, the developer can still read her experiments.

FMA_FUZZ_EXAMPLES (4 in the suite: both tests about 17 s at a load average of 6) worlds, each with up to 6 requests; FMA_FUZZ_SEED as in
test_fuzz.py (``random``: a new seed, printed).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hypothesis
import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fma_core.secagg import SecAggAbort
from fma_django import services
from fma_django.models import Evaluation, Event, Experiment, SecureRoundRow

from .conftest import TIMEOUT, Scene, forget_throttles, weights
from .test_fuzz import ServerErrors

EXAMPLES = int(os.environ.get("FMA_FUZZ_EXAMPLES", "4"))
SEED = os.environ.get("FMA_FUZZ_SEED", "")
MISSING = 2**62  # an experiment, round or aggregate id no world has
STATES = ["collecting", "paused", "stopped", "finished", "budget_spent"]
STAGES = ["advertise", "share_keys", "unmasking"]
# the experiments each caller may reach: any other must answer as one that does not exist
BELONGS = {
    "developer": ("own", "secure"),
    "client": ("own",),
    "secure_client": ("secure",),
    "stranger": ("other",),
    "stranger_client": ("other",),
    "anonymous": (),
}


# -- the world -------------------------------------------------------------------------------------


@dataclass
class World:
    """One example's rows: ids to aim at, and a credential per caller."""

    own: int  # the developer's experiment: an aggregate, an evaluation metric declared
    secure: int  # her secure experiment, with an open secure round
    other: int  # another developer's experiment
    aggregate: int
    other_aggregate: int
    secure_round: int
    length: int  # the secure round's masked-input length, in values
    client_uuids: list[str]
    auth: dict[str, dict[str, str]]

    def experiment(self, name: str) -> int:
        return {"own": self.own, "secure": self.secure, "other": self.other, "missing": MISSING}[name]


def enrolled(server: str, experiment: Experiment) -> tuple[str, str]:
    """A new client of ``experiment``: its credential and uuid."""
    _, token = services.enrollment_token_issue(experiment=experiment, user=experiment.developer)
    answer = requests.post(
        f"{server}/api/v1/models/{experiment.pk}/register_client/",
        json={"enrollment_token": token},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["credential"], answer.json()["uuid"]


@pytest.fixture
def make_world(
    server: str, developer, developer_token: str, make_scene: Callable[[], Scene]
) -> Callable[[], World]:
    from django.contrib.auth.models import User

    from .conftest import PASSWORD

    stranger = User.objects.create_user("fuzz-stranger", password=PASSWORD)
    stranger_token = requests.post(
        server + "/api-token-auth/",
        json={"username": stranger.username, "password": PASSWORD},
        timeout=TIMEOUT,
    ).json()["token"]
    numbers = iter(range(1, 10**6))

    def world() -> World:
        scene = make_scene()  # forgets the throttles too
        own = Experiment.objects.get(pk=scene.experiment)
        services.experiment_update(
            experiment=own, user=developer, evaluation={"metrics": {"accuracy": {"goal": "max"}}}
        )
        secure = services.experiment_create(
            developer=developer,
            name=f"secure {next(numbers)}",
            initial_model=weights(0.0),
            secure_aggregation={"stage_seconds": 600, "clip": 1.0},
        )
        clients = [enrolled(server, secure) for _ in range(3)]
        opened = requests.get(
            f"{server}/api/v1/models/{secure.pk}/secure_round/",
            headers={"Authorization": f"Client {clients[0][0]}"},
            timeout=TIMEOUT,
        )
        assert opened.status_code == 200, opened.text
        other_scene = make_scene()
        other = Experiment.objects.get(pk=other_scene.experiment)
        other.developer = stranger  # the second scene becomes the stranger's
        other.name = f"stranger's {next(numbers)}"
        other.save(update_fields=["developer", "name"])
        forget_throttles()
        return World(
            own=own.pk,
            secure=secure.pk,
            other=other.pk,
            aggregate=scene.aggregate,
            other_aggregate=other_scene.aggregate,
            secure_round=opened.json()["id"],
            length=opened.json()["length"],
            client_uuids=[uuid for _, uuid in clients],
            auth={
                "developer": {"Authorization": f"Token {developer_token}"},
                "client": {"Authorization": f"Client {scene.client_credential}"},
                "secure_client": {"Authorization": f"Client {clients[0][0]}"},
                "stranger": {"Authorization": f"Token {stranger_token}"},
                "stranger_client": {"Authorization": f"Client {other_scene.client_credential}"},
                "anonymous": {},
            },
        )

    return world


def snapshot() -> dict[str, Any]:
    """What a refused request must leave as it was."""
    return {
        "experiments": [
            {k: v for k, v in row.items() if k != "last_modified"}
            for row in Experiment.objects.order_by("pk").values()
        ],
        "evaluations": list(Evaluation.objects.order_by("pk").values()),
        "secure_rounds": list(SecureRoundRow.objects.order_by("pk").values()),
        "events": Event.objects.count(),
    }


def without_secure_rounds(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k not in ("secure_rounds", "events")}


# -- generated values ------------------------------------------------------------------------------


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BASE64S = [_base64(bytes(n)) for n in (0, 1, 24, 32, 66)] + [_base64(b"\xff" * 66)]  # keys, shares, wrong
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2, 2**31, 2**63, 2**64, 10**30, 10**400, -(10**400)]),  # 10**400: no float
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-320, 1e308, 0.5, 0.99, 1.0]),
    st.text(max_size=12),
    st.sampled_from(["1", "8", "max", "nan", "Infinity", "", "\x00", "accuracy"]),
    st.sampled_from(
        [_base64(bytes(n)) for n in (0, 1, 24, 32, 66)] + [_base64(b"\xff" * 66)]
    ),  # keys, shares
    st.just([]),
    st.just({}),
    st.lists(st.integers(), max_size=3),
)
VALID_SETTINGS: dict[str, list[Any]] = {
    "asynchronous": [
        {"buffer": 2},
        {"buffer": 3, "staleness": {"function": "hinge", "a": 1.0, "b": 2}, "max_staleness": 4},
        {"buffer": 1, "server_learning_rate": 0.5, "staleness": "constant"},
    ],
    "privacy": [
        {
            "clip": {"bound": 1.0},
            "noise_multiplier": 1.0,
            "expected_clients": 20,
            "epsilon": 8,
            "delta": 1e-5,
        },
        {
            "clip": {"adaptive": {"initial": 0.1, "target_quantile": 0.5, "learning_rate": 0.2}},
            "noise_multiplier": 1.0,
            "expected_clients": 20,
            "epsilon": 8,
            "delta": 1e-5,
        },
    ],
    "secure_aggregation": [
        {},
        {"stage_seconds": 60, "clip": 1.0},
        {"threshold": 0.75, "degree": 2, "bits": 20, "max_weight": 1000, "rounding": "nearest"},
    ],
    "evaluation": [
        {"metrics": {"accuracy": {"goal": "max"}}},
        {"metrics": {"accuracy": {"goal": "max"}, "loss": {"goal": "min"}}, "schema": {"type": "object"}},
    ],
    "finish_when": [
        {"rounds": 1},
        {"rounds": 5},
        {"metric": "accuracy", "at_least": 0.4},
        {"metric": "loss", "source": "training", "at_most": 0.1},
    ],
}


def _places(value: Any, path: tuple = ()) -> list[tuple]:
    """The path of every value inside ``value`` (itself excluded), containers and leaves alike."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    found = []
    for key, child in items:
        found.append((*path, key))
        found += _places(child, (*path, key))
    return found


def _near(old: Any) -> st.SearchStrategy:
    """A replacement for ``old``: any JSON value, or one close to it (base64 of the wrong bytes for
    base64 text, a boolean, text or an extreme for a number)."""
    if isinstance(old, str):
        return st.one_of(st.sampled_from(BASE64S), LEAVES)
    if isinstance(old, int | float) and not isinstance(old, bool):
        return st.one_of(st.sampled_from([True, False, str(old), -old, 0, 10**400, 2**63, 1e308]), LEAVES)
    return LEAVES


@st.composite
def mangled(draw: st.DrawFn, value: Any) -> Any:
    """``value`` (JSON) with one place changed (any place alike: a leaf or a container replaced, a key
    added or removed), or replaced whole, or as is."""
    how = draw(st.sampled_from(["as is", "replace", "replace", "replace", "add key", "drop key", "whole"]))
    places = _places(value)
    if how == "whole" or (how != "as is" and not places):
        return draw(LEAVES)
    if how == "as is":
        return value
    value = json.loads(json.dumps(value))  # a copy
    *route, last = draw(st.sampled_from(places))
    parent: Any = value
    for key in route:
        parent = parent[key]
    if how == "add key" and isinstance(parent, dict):
        parent[draw(st.sampled_from(["extra", "Rounds", "", "buffer_size", "goal"]))] = draw(LEAVES)
    elif how == "drop key":
        del parent[last]
    else:
        parent[last] = draw(_near(parent[last]))
    return value


@st.composite
def settings_body(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(sorted(VALID_SETTINGS)), min_size=1, max_size=2, unique=True))
    body: dict[str, Any] = {}
    for name in names:
        body[name] = draw(st.one_of(st.none(), mangled(draw(st.sampled_from(VALID_SETTINGS[name])))))
    if draw(st.integers(0, 9)) == 0:
        body["allow_aggregation"] = draw(st.one_of(st.booleans(), LEAVES))
    return body


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64(size: int) -> str:
    return base64.b64encode(random.Random(size).randbytes(size)).decode()


@dataclass
class Call:
    """One request: who sends it, where, what."""

    caller: str
    method: str
    path: str  # with {e} for the experiment, {r} for a secure round
    target: str  # own, secure, other, missing
    body: Any = None  # JSON, or bytes sent as they are
    content_type: str = "application/json"
    query: dict[str, str] | None = None
    retry: bool = False
    round_target: str = "real"


@st.composite
def calls(draw: st.DrawFn, world: World) -> Call:
    kind = draw(
        st.sampled_from(
            ["state", "evaluate", "evaluations", "settings", "secure_get", "secure_stage", "masked"]
        )
    )
    target = draw(st.sampled_from(["own", "own", "secure", "other", "missing"]))
    callers = [
        "developer",
        "developer",
        "stranger",
        "client",
        "secure_client",
        "stranger_client",
        "anonymous",
    ]
    caller = draw(st.sampled_from(callers))
    if kind == "state":
        body = draw(
            st.one_of(
                st.builds(lambda s: {"state": s}, st.sampled_from(STATES)),
                st.builds(lambda s, r: {"state": s, "reason": r}, st.sampled_from(STATES), LEAVES),
                mangled({"state": "paused", "reason": "x"}),
            )
        )
        call = Call(caller, "POST", "models/{e}/state/", target, body)
    elif kind == "evaluate":
        aggregate = draw(st.sampled_from([world.aggregate, world.other_aggregate, MISSING]))
        valid = {"aggregate": aggregate, "metrics": {"accuracy": 0.5}, "num_examples": 10}
        call = Call(caller, "POST", "models/{e}/evaluations/", target, draw(mangled(valid)))
    elif kind == "evaluations":
        query = draw(
            st.dictionaries(
                st.sampled_from(["aggregate", "source", "after", "ordering", "page"]),
                st.one_of(
                    st.sampled_from([str(world.aggregate), "client", "developer", "-id", "0", str(2**64)]),
                    st.text(max_size=8),
                ),
                max_size=2,
            )
        )
        call = Call(caller, "GET", "models/{e}/evaluations/", target, query=query)
    elif kind == "settings":
        call = Call(caller, "PATCH", "models/{e}/", target, draw(settings_body()))
    elif kind == "secure_get":
        query = draw(st.sampled_from([{}, {"id": "{r}"}, {"id": "x"}, {"id": str(2**64)}]))
        call = Call(caller, "GET", "models/{e}/secure_round/", target, query=query)
    elif kind == "secure_stage":
        stage = draw(st.one_of(st.sampled_from(STAGES), st.sampled_from(["masked", "ADVERTISE", "x"])))
        peer = draw(st.sampled_from(world.client_uuids))
        valid = {
            "advertise": {"encryption": b64(32), "masking": b64(32)},
            "share_keys": {"shares": {peer: b64(80)}},
            "unmasking": {"shares": [[peer, "mask", b64(24)]]},
        }.get(stage, {})
        call = Call(
            caller, "POST", "models/{e}/secure_round/{r}/" + stage + "/", target, draw(mangled(valid))
        )
    else:
        size = draw(st.sampled_from([(world.length + 1) * 8, world.length * 8, 0, 7, 8]))
        call = Call(caller, "PUT", "models/{e}/secure_round/{r}/masked_input/", target, b"\x01" * size)
        call.content_type = draw(st.sampled_from(["application/octet-stream", "application/json"]))
    if kind not in ("masked", "evaluations", "secure_get"):
        encoding = draw(st.sampled_from(["json"] * 6 + ["malformed", "text", "form", "nan"]))
        if encoding == "malformed":
            call.body = json.dumps(call.body).encode()[:-1] or b"{"
        elif encoding == "text":
            call.content_type = "text/plain"
        elif encoding == "form":
            call.content_type = "application/x-www-form-urlencoded"
            call.body = b"state=paused&aggregate=1"
        elif encoding == "nan":  # what Python's json writes for NaN and infinities: not JSON
            call.body = json.dumps(call.body).replace("0.5", "NaN").replace("1.0", "Infinity").encode()
    call.round_target = draw(st.sampled_from(["real", "real", "real", "missing"]))
    call.retry = draw(st.integers(0, 4)) == 0
    return call


# -- sending and checking --------------------------------------------------------------------------


def send(server: str, world: World, call: Call, experiment: int) -> requests.Response:
    round_id = world.secure_round if call.round_target == "real" else MISSING
    path = call.path.replace("{e}", str(experiment)).replace("{r}", str(round_id))
    query = {k: v.replace("{r}", str(round_id)) for k, v in (call.query or {}).items()}
    if isinstance(call.body, bytes):
        data = call.body
    else:
        text = json.dumps(call.body, allow_nan=True)  # NaN and Infinity as Python writes them
        data = text.encode()
    headers = {**world.auth[call.caller], "Connection": "close"}
    if call.method != "GET":
        headers["Content-Type"] = call.content_type
    return requests.request(
        call.method,
        f"{server}/api/v1/{path}",
        params=query,
        data=data if call.method != "GET" else None,
        headers=headers,
        timeout=TIMEOUT,
        allow_redirects=False,
    )


def described(call: Call, response: requests.Response) -> str:
    body = call.body
    if isinstance(body, bytes) and len(body) >= 80:
        body = f"<{len(body)} bytes>"
    return (
        f"{call.caller} {call.method} {call.path} target={call.target} round={call.round_target} "
        f"query={call.query} content_type={call.content_type} body={body!r} "
        f"-> {response.status_code} {response.text[:300]}"
    )


def check(server: str, world: World, call: Call, errors: ServerErrors, failures: list[str]) -> None:
    experiment = world.experiment(call.target)
    before = snapshot()
    try:
        response = send(server, world, call, experiment)
    except requests.RequestException as error:
        failures.append(f"connection error {error}: {call}")
        return
    tracebacks = errors.take()
    what = described(call, response)
    if response.status_code >= 500:
        failures.append(f"5xx: {what} {tracebacks[:1]}")
        return
    after = snapshot()
    if response.status_code >= 400:
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not (isinstance(answer, dict) and answer.get("detail") and answer.get("code")):
            failures.append(f"a refusal without detail and code: {what}")
        ended_round = (
            response.status_code == 409
            and isinstance(answer, dict)
            and answer.get("code") == ("experiment_ended")
        )
        compared = (
            (without_secure_rounds(before), without_secure_rounds(after)) if ended_round else (before, after)
        )
        if compared[0] != compared[1]:
            failures.append(f"a refused request changed rows: {what}")
    if call.target != "missing" and call.target not in BELONGS[call.caller]:
        forget_throttles()
        missing = send(server, world, call, MISSING)
        if missing.status_code != response.status_code or (
            response.status_code >= 400 and missing.json().get("code") != response.json().get("code")
        ):
            failures.append(
                f"another tenant's experiment answers unlike a missing one ({missing.status_code} "
                f"{missing.text[:200]}): {what}"
            )
        assert snapshot() == after, what
    if call.retry and response.status_code < 300:
        again = send(server, world, call, experiment)
        errors.take()
        if again.status_code >= 300:
            failures.append(
                f"a retry of an accepted request was refused ({again.status_code} {again.text[:200]}): {what}"
            )
        elif snapshot() != after:
            failures.append(f"a retry of an accepted request changed rows again: {what}")
    read = requests.get(
        f"{server}/api/v1/models/{world.own}/", headers=world.auth["developer"], timeout=TIMEOUT
    )
    if read.status_code != 200:
        failures.append(
            f"the experiment no longer reads ({read.status_code} {read.text[:200]}) after: {what}"
        )
    errors.take()


# How both tests run their examples: FMA_FUZZ_EXAMPLES of them, from FMA_FUZZ_SEED when it is set.
RUNS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    derandomize=not SEED,
    print_blob=False,
)


def _run(examples, name: str, errors: ServerErrors, failures: list[str]) -> None:
    """Run a Hypothesis test (from FMA_FUZZ_SEED when set, printed so a failure can be replayed),
    then fail with every distinct failure it collected."""
    if SEED:
        seed = random.randrange(2**32) if SEED == "random" else int(SEED)
        print(f"{name}: FMA_FUZZ_SEED={seed}")
        examples = hypothesis.seed(seed)(examples)
    try:
        examples()
    finally:
        logging.getLogger("django.request").removeHandler(errors)
    distinct = sorted(set(failures))
    assert not distinct, f"{len(distinct)} distinct failures:\n" + "\n".join(distinct[:40])


def test_lifecycle_evaluations_secure_rounds_and_settings_hold_their_invariants(server, make_world):
    errors, failures = ServerErrors(), []
    logging.getLogger("django.request").addHandler(errors)

    @RUNS
    @given(data=st.data())
    def examples(data: st.DataObject) -> None:
        world = make_world()
        for call in data.draw(st.lists(calls(world), min_size=1, max_size=6)):
            forget_throttles()
            check(server, world, call, errors, failures)

    _run(examples, "lifecycle", errors, failures)


# -- secure rounds run by real clients ---------------------------------------------------------------


@dataclass
class Twist:
    """How one client strays from the protocol in a secure round the others run honestly."""

    stage: str  # advertise, share_keys, masked_input, unmasking
    client: int  # which of the three
    how: str  # mangle (its answer changed), skip (it drops out), twice (a retry), other (a second, different answer)


def b64_decode(text: str) -> bytes:
    return base64.b64decode(text)


@st.composite
def twists(draw: st.DrawFn) -> list[Twist]:
    return draw(
        st.lists(
            st.builds(
                Twist,
                stage=st.sampled_from(["advertise", "share_keys", "masked_input", "unmasking"]),
                client=st.integers(0, 2),
                how=st.sampled_from(["mangle", "mangle", "skip", "twice", "other"]),
            ),
            min_size=1,
            max_size=3,
        )
    )


class SecureWalk:
    """Three enrolled clients running one secure round over HTTP, each answer checked as it comes."""

    def __init__(
        self, server: str, experiment: Experiment, data: st.DataObject, errors: ServerErrors
    ) -> None:
        from fma_core.secagg import ClientSession, RoundParams

        self.server, self.experiment, self.data, self.errors = server, experiment, data, errors
        self.failures: list[str] = []
        self.base = f"{server}/api/v1/models/{experiment.pk}/secure_round/"
        self.clients = [enrolled(server, experiment) for _ in range(3)]
        view = self.get(0)
        self.round = view["id"]
        params = RoundParams.from_json(view["params"])
        self.sessions = [ClientSession(uuid, params) for _, uuid in self.clients]
        self.dropped: set[int] = set()

    def auth(self, client: int) -> dict[str, str]:
        return {"Authorization": f"Client {self.clients[client][0]}", "Connection": "close"}

    def get(self, client: int) -> dict[str, Any]:
        answer = requests.get(
            self.base,
            params={"id": self.round} if hasattr(self, "round") else None,
            headers=self.auth(client),
            timeout=TIMEOUT,
        )
        self.judge(f"GET secure_round as client {client}", answer, before=None)
        return answer.json() if answer.status_code == 200 else {}

    def judge(self, what: str, answer: requests.Response, before: dict | None) -> None:
        tracebacks = self.errors.take()
        told = f"{what} -> {answer.status_code} {answer.text[:300]}"
        if answer.status_code >= 500:
            self.failures.append(f"5xx: {told} {tracebacks[:1]}")
        elif answer.status_code >= 400:
            body = (
                answer.json() if answer.headers.get("Content-Type", "").startswith("application/json") else {}
            )
            if not (body.get("detail") and body.get("code")):
                self.failures.append(f"a refusal without detail and code: {told}")
            if before is not None and snapshot() != before:
                self.failures.append(f"a refused stage answer changed rows: {told}")

    def send(self, client: int, stage: str, payload: Any) -> None:
        forget_throttles()
        before = snapshot()
        url = f"{self.base}{self.round}/{stage}/"
        if stage == "masked_input":
            answer = requests.put(
                url,
                data=payload,
                headers={**self.auth(client), "Content-Type": "application/octet-stream"},
                timeout=TIMEOUT,
            )
            shown = f"<{len(payload)} bytes>"
        else:
            answer = requests.post(
                url,
                data=json.dumps(payload, allow_nan=True),
                headers={**self.auth(client), "Content-Type": "application/json"},
                timeout=TIMEOUT,
            )
            shown = json.dumps(payload, allow_nan=True)[:200]
        self.judge(f"client {client} {stage} {shown}", answer, before)

    def answer(self, client: int, stage: str, view: dict[str, Any]) -> Any:
        """The honest answer of ``client`` at ``stage``, from its view of the round."""
        from fma_core.secagg import PublicKeys

        session = self.sessions[client]
        if stage == "advertise":
            keys = session.advertise()
            return {"encryption": b64encode(keys.encryption), "masking": b64encode(keys.masking)}
        if stage == "share_keys":
            roster = {c: PublicKeys(b64_decode(e), b64_decode(m)) for c, (e, m) in view["roster"].items()}
            return {"shares": {j: b64encode(ct) for j, ct in session.share_keys(roster).items()}}
        if stage == "masked_input":
            session.receive_shares({c: b64_decode(ct) for c, ct in view["inbox"].items()})
            update = weights(0.25)
            blocks = (update[name].astype("float64").ravel() for name in view["tensors"])
            return b"".join(block.astype("<u8").tobytes() for block in session.masked_input(blocks, 1))
        return {"shares": [[s.owner, s.kind, b64encode(s.value)] for s in session.unmask(view["survivors"])]}

    def stray(self, client: int, stage: str, honest: Any, how: str) -> Any:
        """What a straying client sends instead of (or besides) ``honest``; None: nothing (it dropped)."""
        if how == "skip":
            self.dropped.add(client)
            return None
        if how == "twice":
            self.send(client, stage, honest)
            return honest
        if stage == "masked_input":
            size = self.data.draw(st.sampled_from([len(honest), len(honest) - 8, 0]), label="size")
            return (b"\xff" * size) if how == "other" else honest[:size]
        changed = self.data.draw(mangled(honest), label=f"{stage} answer")
        if how == "other":  # the honest answer first, then a different one
            self.send(client, stage, honest)
        return changed

    def run(self, plan: list[Twist]) -> None:
        for stage in ("advertise", "share_keys", "masked_input", "unmasking"):
            for client in range(3):
                if client in self.dropped:
                    continue
                view = self.get(client)
                if view.get("action") != stage:
                    continue  # dropped by the round, or the round failed: its view says so
                try:
                    honest = self.answer(client, stage, view)
                except (
                    SecAggAbort
                ):  # a straying neighbour's share does not authenticate: it stops, as fma-client does
                    self.dropped.add(client)
                    continue
                sent = honest
                for twist in plan:
                    if (twist.stage, twist.client) == (stage, client) and sent is not None:
                        sent = self.stray(client, stage, sent, twist.how)
                if sent is not None:
                    self.send(client, stage, sent)
        # the deadlines pass and the runner sums: a round ends unmasked or failed, never stuck in an error
        from fma_django import secure_rounds

        try:
            for later in range(1, 6):  # each sweep closes one stage whose deadline has passed
                secure_rounds.secure_rounds_advance(now=time.time() + later * 10**6)
            secure_rounds.secure_round_unmask(self.round)
        except Exception as error:  # the runner's job must end the round, whatever the clients sent
            self.failures.append(
                f"the round's sweep or sum raised {type(error).__name__}: {error}; plan {plan}"
            )
        stage = SecureRoundRow.objects.values_list("stage", flat=True).get(pk=self.round)
        if stage not in ("unmasked", "failed"):
            self.failures.append(
                f"the round ended at stage {stage!r}, neither unmasked nor failed; plan {plan}"
            )
        self.get(0)


@pytest.fixture
def make_secure_experiment(server: str, developer) -> Callable[[], Experiment]:
    numbers = iter(range(1, 10**6))

    def create() -> Experiment:
        forget_throttles()
        return services.experiment_create(
            developer=developer,
            name=f"secure walk {next(numbers)}",
            initial_model=weights(0.0),
            secure_aggregation={"stage_seconds": 600, "clip": 1.0},
        )

    return create


def test_secure_rounds_hold_their_invariants_whatever_one_client_sends(server, make_secure_experiment):
    errors, failures = ServerErrors(), []
    logging.getLogger("django.request").addHandler(errors)

    @RUNS
    @given(plan=twists(), data=st.data())
    def examples(plan: list[Twist], data: st.DataObject) -> None:
        walk = SecureWalk(server, make_secure_experiment(), data, errors)
        walk.run(plan)
        failures.extend(walk.failures)

    _run(examples, "secure walk", errors, failures)
