"""Secure rounds follow the experiment's lifecycle: a paused experiment opens no round (one already
open finishes), an ended one refuses stage requests with 409 ``experiment_ended`` and its open round
fails with its masked inputs removed, and ``finish_when`` ends a secure experiment at its round."""

from __future__ import annotations

import base64
import io
import os
import threading
import time

import numpy as np
import pytest
from django.db import connection

from fma_core.secagg import ClientSession, PublicKeys, RoundParams
from fma_core.weights import load
from fma_django import lifecycle, secure_rounds
from fma_django.housekeeping import housekeeping_sweep, weights_remove_unreferenced
from fma_django.models import Event, EventKind, ExperimentState, ModelAggregate, SecureRoundRow
from fma_django.signals import secure_round_unmask_requested
from fma_django.storage import weight_store

from .conftest import make_weights

# a round's end deletes its masked inputs once its transaction commits: the tests see real commits
pytestmark = pytest.mark.django_db(transaction=True)

STAGES = ("advertise", "share_keys", "masked_input", "unmasking")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


class Round:
    """Clients taking part in one secure round through the API, stage by stage."""

    def __init__(self, apis: list, experiment_id: int) -> None:
        self.apis = apis
        self.base = f"/api/v1/models/{experiment_id}/secure_round/"
        view = apis[0].get(self.base).json()
        assert view["action"] == "advertise", view
        self.id = view["id"]
        self.sessions = {
            api.uuid: ClientSession(api.uuid, RoundParams.from_json(view["params"])) for api in apis
        }

    def view(self, api) -> dict:
        return api.get(self.base, {"id": self.id}).json()

    def stage(self, name: str) -> list:
        """Every client answers stage ``name``; the responses."""
        responses = []
        for api in self.apis:
            session = self.sessions[api.uuid]
            view = self.view(api)
            assert view["action"] == name, view
            url = f"{self.base}{self.id}/{name}/"
            if name == "advertise":
                keys = session.advertise()
                body = {"encryption": b64(keys.encryption), "masking": b64(keys.masking)}
                responses.append(api.post(url, body, format="json"))
            elif name == "share_keys":
                roster = {c: PublicKeys(unb64(e), unb64(m)) for c, (e, m) in view["roster"].items()}
                shares = {j: b64(ct) for j, ct in session.share_keys(roster).items()}
                responses.append(api.post(url, {"shares": shares}, format="json"))
            elif name == "masked_input":
                session.receive_shares({c: unb64(ct) for c, ct in view["inbox"].items()})
                update = make_weights(0.25)
                blocks = (np.asarray(update[n], dtype=np.float64).ravel() for n in view["tensors"])
                body = b"".join(b.astype("<u8").tobytes() for b in session.masked_input(blocks, 1))
                responses.append(api.generic("PUT", url, body, content_type="application/octet-stream"))
            else:
                revealed = [[s.owner, s.kind, b64(s.value)] for s in session.unmask(view["survivors"])]
                responses.append(api.post(url, {"shares": revealed}, format="json"))
        return responses

    def through(self, last: str) -> list:
        """Run the stages up to and including ``last``; the last stage's responses."""
        for name in STAGES[: STAGES.index(last) + 1]:
            responses = self.stage(name)
            assert all(r.status_code == 200 for r in responses), [r.content for r in responses]
        return responses

    def finish(self) -> dict:
        """Run every stage, then the runner's sum (the tests have no runner); a client's view after it."""
        assert self.through("unmasking")[-1].json()["action"] == "wait"
        assert secure_rounds.secure_round_unmask(self.id) is not None
        return self.view(self.apis[0])


@pytest.fixture
def secure(make_experiment):
    return make_experiment(secure_aggregation={"stage_seconds": 60, "clip": 1.0})


def masked_files(stored_files) -> list[str]:
    return [f for f in stored_files() if f.startswith("secure/")]


def test_finish_when_ends_a_secure_experiment_at_its_round(make_experiment, enroll, stored_files):
    experiment = make_experiment(secure_aggregation={"stage_seconds": 60}, finish_when={"rounds": 1})
    apis = [enroll(experiment) for _ in range(3)]
    one = Round(apis, experiment.pk)
    done = one.finish()
    assert (done["action"], done["round"]) == ("done", 1)
    experiment.refresh_from_db()
    assert experiment.state == ExperimentState.FINISHED
    assert experiment.state_reason == "round limit reached: 1 of 1 rounds"
    assert Event.objects.filter(kind=EventKind.EXPERIMENT_ENDED, experiment=experiment).count() == 1
    # the clients of the finishing round still read their result; nothing opens or moves any more
    assert one.view(apis[1])["action"] == "done"
    refused = apis[0].get(one.base)
    assert (refused.status_code, refused.json()["code"]) == (409, "experiment_ended")
    assert SecureRoundRow.objects.count() == 1
    assert ModelAggregate.objects.filter(experiment=experiment).count() == 1
    assert not masked_files(stored_files)


def test_a_paused_experiment_opens_no_round_but_lets_an_open_one_finish(secure, enroll, developer):
    apis = [enroll(secure) for _ in range(3)]
    lifecycle.experiment_set_state(experiment=secure, state=ExperimentState.PAUSED, user=developer)
    view = apis[0].get(f"/api/v1/models/{secure.pk}/secure_round/").json()
    assert (view["id"], view["stage"], view["action"]) == (None, "paused", "wait")
    assert not SecureRoundRow.objects.exists()

    lifecycle.experiment_set_state(experiment=secure, state=ExperimentState.COLLECTING, user=developer)
    running = Round(apis, secure.pk)
    running.through("masked_input")
    lifecycle.experiment_set_state(experiment=secure, state=ExperimentState.PAUSED, user=developer)
    assert running.stage("unmasking")[-1].json()["action"] == "wait"
    secure_rounds.secure_round_unmask(running.id)
    assert (
        running.view(apis[0])["action"] == "done"
    )  # the round under way commits, as a leased plain round does
    assert ModelAggregate.objects.filter(experiment=secure, round_number=1).exists()
    after = apis[0].get(running.base).json()
    assert (after["stage"], after["round"]) == ("paused", 2)
    assert SecureRoundRow.objects.count() == 1


@pytest.mark.parametrize("how", ["request", "sweep"])
def test_stopping_fails_the_open_round_and_removes_its_masked_inputs(
    secure, enroll, developer, stored_files, how
):
    apis = [enroll(secure) for _ in range(3)]
    running = Round(apis, secure.pk)
    running.through("masked_input")
    assert len(masked_files(stored_files)) == 3
    lifecycle.experiment_set_state(
        experiment=secure, state=ExperimentState.STOPPED, user=developer, reason="enough"
    )
    if how == "request":
        session = running.sessions[apis[0].uuid]
        shares = [[s.owner, s.kind, b64(s.value)] for s in session.unmask([a.uuid for a in apis])]
        refused = apis[0].post(f"{running.base}{running.id}/unmasking/", {"shares": shares}, format="json")
        assert (refused.status_code, refused.json()["code"]) == (409, "experiment_ended")
        polled = apis[1].get(running.base, {"id": running.id})
        assert (polled.status_code, polled.json()["code"]) == (409, "experiment_ended")
    else:
        assert secure_rounds.secure_rounds_advance() == 1
    row = SecureRoundRow.objects.get()
    assert row.stage == "failed"
    assert row.reason.startswith(f"the experiment is stopped: stopped by {developer.get_username()}")
    assert row.state["revealed"] == {}
    assert row.state["outbox"] == {}
    assert not masked_files(stored_files)
    assert not ModelAggregate.objects.filter(experiment=secure).exists()
    assert Event.objects.filter(kind=EventKind.ROUND_FAILED, experiment=secure).count() == 1
    for stage in ("advertise", "share_keys", "unmasking"):
        late = apis[2].post(f"{running.base}{running.id}/{stage}/", {}, format="json")
        assert (late.status_code, late.json()["code"]) == (409, "experiment_ended")
    late_input = apis[2].generic(
        "PUT",
        f"{running.base}{running.id}/masked_input/",
        b"\0" * 16,
        content_type="application/octet-stream",
    )
    assert (late_input.status_code, late_input.json()["code"]) == (409, "experiment_ended")
    assert not masked_files(stored_files)
    assert secure_rounds.secure_rounds_advance() == 0


def test_the_orphan_sweep_removes_masked_inputs_no_open_round_names(
    secure, enroll, settings, weights_dir, stored_files
):
    settings.FMA_ORPHAN_SWEEP_SECONDS = 0
    apis = [enroll(secure) for _ in range(3)]
    running = Round(apis, secure.pk)
    running.through("masked_input")
    store = weight_store()
    left = [  # a crash between storing an input and recording it, and keys no round could name
        store.put(f"secure/{secure.pk}/{running.id}/{apis[0].uuid}-0badf00d.u64", io.BytesIO(b"\0" * 16)).key,
        store.put(f"secure/{secure.pk}/{running.id + 1}/{apis[0].uuid}-0badf00d.u64", io.BytesIO(b"\0")).key,
        store.put(f"secure/{secure.pk}/stray.u64", io.BytesIO(b"\0")).key,
    ]
    month_ago = time.time() - 30 * 86400
    for key in masked_files(stored_files):
        os.utime(weights_dir / key, (month_ago, month_ago))
    named = set(SecureRoundRow.objects.get().state["inputs"].values())
    assert len(named) == 3

    assert weights_remove_unreferenced(lease_seconds=900) == 3
    assert set(masked_files(stored_files)) == named  # the open round's inputs stay, old as they are
    assert not any(store.exists(key) for key in left)

    # a crash after the round's end committed, before its inputs were deleted: nothing names them now
    SecureRoundRow.objects.update(stage="failed")
    assert weights_remove_unreferenced(lease_seconds=900) == 3
    assert not masked_files(stored_files)


def test_a_round_that_ends_deletes_its_masked_inputs(secure, enroll, stored_files):
    apis = [enroll(secure) for _ in range(3)]
    Round(apis, secure.pk).finish()
    assert SecureRoundRow.objects.get().stage == "unmasked"
    assert not masked_files(stored_files)


def test_the_last_share_hands_the_sum_to_the_runner_and_every_sweep_hands_it_again(
    secure, enroll, stored_files, weights_dir
):
    handed: list[int] = []

    def receiver(*, round_id: int, **kwargs: object) -> None:
        handed.append(round_id)

    secure_round_unmask_requested.connect(receiver, weak=False, dispatch_uid="test-handed")
    try:
        apis = [enroll(secure) for _ in range(3)]
        running = Round(apis, secure.pk)
        last = running.through("unmasking")[-1].json()
        assert (last["stage"], last["action"], last["aggregate"]) == ("summing", "wait", None)
        assert handed == [running.id]  # announced once the request committed, not summed in it
        assert not ModelAggregate.objects.exists()
        assert len(masked_files(stored_files)) == 3  # still named by the round: the sweep keeps them
        assert housekeeping_sweep(lease_seconds=900)["secure_rounds_summing"] == 1
        assert handed == [running.id, running.id]
        # another client asking for the current round waits for this one; none opens beside it
        assert apis[1].get(running.base).json()["id"] == running.id
        late = apis[2].post(f"{running.base}{running.id}/unmasking/", {"shares": []}, format="json")
        assert (late.status_code, late.json()["code"]) == (409, "secagg_stage")
    finally:
        secure_round_unmask_requested.disconnect(dispatch_uid="test-handed")

    row = secure_rounds.secure_round_unmask(running.id)
    assert (row.stage, row.aggregate.round_number) == ("unmasked", 1)
    assert secure_rounds.secure_round_unmask(running.id) is None  # once
    assert ModelAggregate.objects.count() == 1
    assert not masked_files(stored_files)
    assert secure_rounds.secure_rounds_summing() == []
    total = sum(np.asarray(v, dtype=np.float64).sum() for v in make_weights(0.25).values())
    aggregate = load(weights_dir / row.aggregate.weights_key)
    assert sum(v.astype(np.float64).sum() for v in aggregate.values()) == pytest.approx(total, rel=1e-4)


def test_a_worker_killed_while_summing_leaves_the_round_to_the_next_one(secure, enroll, monkeypatch):
    apis = [enroll(secure) for _ in range(3)]
    running = Round(apis, secure.pk)
    running.through("unmasking")

    def killed(experiment):
        raise SystemExit("killed after the aggregate was written, before the commit")

    monkeypatch.setattr(secure_rounds.lifecycle, "finish_if_reached", killed)
    with pytest.raises(SystemExit):
        secure_rounds.secure_round_unmask(running.id)
    assert SecureRoundRow.objects.get().stage == "summing"
    assert not ModelAggregate.objects.exists()
    monkeypatch.undo()
    assert secure_rounds.secure_rounds_summing() == [running.id]
    assert secure_rounds.secure_round_unmask(running.id).stage == "unmasked"
    assert ModelAggregate.objects.count() == 1


def test_an_experiment_stopped_while_summing_records_no_aggregate(secure, enroll, developer, stored_files):
    apis = [enroll(secure) for _ in range(3)]
    running = Round(apis, secure.pk)
    running.through("unmasking")
    lifecycle.experiment_set_state(experiment=secure, state=ExperimentState.STOPPED, user=developer)
    row = secure_rounds.secure_round_unmask(running.id)
    assert row.stage == "failed"
    assert row.reason.startswith("the experiment is stopped")
    assert not ModelAggregate.objects.exists()
    assert not [f for f in stored_files() if f.startswith(("secure/", "aggregates/"))]


def test_workers_summing_at_once_record_one_aggregate(require_postgresql, secure, enroll):
    apis = [enroll(secure) for _ in range(3)]
    running = Round(apis, secure.pk)
    running.through("unmasking")
    results: list[object] = []
    barrier = threading.Barrier(3)

    def worker() -> None:
        try:
            barrier.wait(timeout=30)
            results.append(secure_rounds.secure_round_unmask(running.id))
        except Exception as error:  # handed to the test
            results.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 3
    assert not [r for r in results if isinstance(r, Exception)]
    assert len([r for r in results if r is not None]) == 1
    assert ModelAggregate.objects.filter(experiment=secure).count() == 1


def test_a_malformed_share_is_refused_when_sent_and_the_round_still_unmasks(make_experiment, enroll):
    """A share is checked when a survivor reveals it (66 bytes, in the field, of a known kind): before,
    a short one was stored and the request closing the stage answered 500, as did every later one."""
    experiment = make_experiment(secure_aggregation={"stage_seconds": 60})
    apis = [enroll(experiment) for _ in range(3)]
    one = Round(apis, experiment.pk)
    one.through("masked_input")
    survivors = one.view(apis[0])["survivors"]
    url = f"{one.base}{one.id}/unmasking/"
    for owner, kind, value in [
        (survivors[1], "self_mask", b"\x01" * 24),  # short
        (survivors[1], "self_mask", b"\xff" * 66),  # beyond the field's prime
        (survivors[1], "seed", b"\x01" * 66),  # no such kind
    ]:
        before = SecureRoundRow.objects.values().get(pk=one.id)
        refused = apis[0].post(url, {"shares": [[owner, kind, b64(value)]]}, format="json")
        assert (refused.status_code, refused.json()["code"]) == (400, "secagg_invalid"), refused.content
        assert SecureRoundRow.objects.values().get(pk=one.id) == before
    assert all(answer.status_code == 200 for answer in one.stage("unmasking"))
    assert secure_rounds.secure_round_unmask(one.id) is not None
    assert one.view(apis[0])["action"] == "done"


def test_a_public_key_no_exchange_can_use_is_refused_when_advertised(make_experiment, enroll):
    """An all-zero (low-order) X25519 key made every neighbour's exchange with it fail, so one client
    could break a round for all; it is refused at the advertise stage, and the round goes on."""
    experiment = make_experiment(secure_aggregation={"stage_seconds": 60})
    apis = [enroll(experiment) for _ in range(3)]
    one = Round(apis, experiment.pk)
    before = SecureRoundRow.objects.values().get(pk=one.id)
    url = f"{one.base}{one.id}/advertise/"
    usable = b64(one.sessions[apis[0].uuid].advertise().masking)
    for body in (
        {"encryption": b64(bytes(32)), "masking": usable},
        {"encryption": usable, "masking": b64(bytes(32))},
    ):
        refused = apis[0].post(url, body, format="json")
        assert (refused.status_code, refused.json()["code"]) == (400, "secagg_invalid"), refused.content
        assert "not a usable X25519 key" in refused.json()["detail"]
    assert SecureRoundRow.objects.values().get(pk=one.id) == before
    assert secure_rounds.secure_round_unmask(one.id) is None  # nothing to sum yet
    assert Round.finish(one)["action"] == "done"


def test_a_round_whose_weights_sum_to_nothing_fails_instead_of_being_summed_again(
    make_experiment, enroll, stored_files
):
    """A survivor can shift its weight element so that the unmasked weights sum to 0 (the masks cancel
    whatever it sends): no mean exists, and the round fails with why; before, the sum raised and the
    round stayed ``summing``, handed out again by every sweep."""
    experiment = make_experiment(secure_aggregation={"stage_seconds": 60})
    apis = [enroll(experiment) for _ in range(3)]
    one = Round(apis, experiment.pk)
    one.through("masked_input")
    row = SecureRoundRow.objects.get(pk=one.id)
    state = row.state
    first = state["survivors"][0]
    store = weight_store()
    with store.open(state["inputs"][first]) as stream:
        body = bytearray(stream.read())
    weight = np.frombuffer(bytes(body[:8]), dtype="<u8")[0] - np.uint64(3)  # the three weights of 1
    body[:8] = np.array([weight], dtype="<u8").tobytes()
    store.put(state["inputs"][first], io.BytesIO(bytes(body)))
    assert all(answer.status_code == 200 for answer in one.stage("unmasking"))
    ended = secure_rounds.secure_round_unmask(one.id)
    assert ended is not None
    assert (ended.stage, ended.aggregate_id) == ("failed", None)
    assert "unmasking: the unmasked sum of weights is not positive" in ended.reason
    assert secure_rounds.secure_rounds_summing() == []
    assert masked_files(stored_files) == []


def test_encrypted_shares_of_the_wrong_size_are_refused_when_sent(make_experiment, enroll):
    """Each neighbour's sealed pair of shares has one size; another is refused at share_keys (400)
    instead of being relayed to a neighbour that could only abort the round on it."""
    experiment = make_experiment(secure_aggregation={"stage_seconds": 60})
    apis = [enroll(experiment) for _ in range(3)]
    one = Round(apis, experiment.pk)
    one.through("advertise")
    roster = one.view(apis[0])["roster"]
    neighbours = [uuid for uuid in roster if uuid != apis[0].uuid]
    before = SecureRoundRow.objects.values().get(pk=one.id)
    for size in (0, 1, 159, 161):
        shares = {j: b64(bytes(size if j == neighbours[0] else 160)) for j in neighbours}
        refused = apis[0].post(f"{one.base}{one.id}/share_keys/", {"shares": shares}, format="json")
        assert (refused.status_code, refused.json()["code"]) == (400, "secagg_invalid"), refused.content
        assert "are not 160 bytes" in refused.json()["detail"]
    assert SecureRoundRow.objects.values().get(pk=one.id) == before
    assert all(answer.status_code == 200 for answer in one.stage("share_keys"))
