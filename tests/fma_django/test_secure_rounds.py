"""The secure_round/ API's refusals: each a clear 4xx with its code, and nothing stored or changed."""

from __future__ import annotations

import base64

import pytest

from fma_core.secagg import ClientSession, RoundParams
from fma_django.models import ModelUpdate, SecureRoundRow

from .conftest import upload


@pytest.fixture
def secure(make_experiment):
    return make_experiment(secure_aggregation={"stage_seconds": 60})


def keys_body(view: dict, uuid: str) -> dict:
    keys = ClientSession(uuid, RoundParams.from_json(view["params"])).advertise()
    return {
        "encryption": base64.b64encode(keys.encryption).decode(),
        "masking": base64.b64encode(keys.masking).decode(),
    }


def test_stage_requests_are_checked_and_retries_change_nothing(secure, enroll, safetensors, stored_files):
    apis = [enroll(secure) for _ in range(3)]
    base = f"/api/v1/models/{secure.pk}/secure_round/"
    view = apis[0].get(base).json()
    assert (view["stage"], view["action"], view["round"]) == ("advertise", "advertise", 1)
    assert view["tensors"]
    assert view["length"] > 0
    body = keys_body(view, apis[0].uuid)
    first = apis[0].post(f"{base}{view['id']}/advertise/", body, format="json")
    assert first.status_code == 200
    assert first.json()["action"] == "wait"
    again = apis[0].post(f"{base}{view['id']}/advertise/", body, format="json")
    assert again.status_code == 200  # the same answer again: no change
    other = apis[0].post(f"{base}{view['id']}/advertise/", keys_body(view, apis[0].uuid), format="json")
    assert (other.status_code, other.json()["code"]) == (409, "secagg_conflict")
    bad = apis[1].post(f"{base}{view['id']}/advertise/", {"encryption": "!!", "masking": "x"}, format="json")
    assert (bad.status_code, bad.json()["code"]) == (400, "secagg_invalid")
    early = apis[1].post(f"{base}{view['id']}/share_keys/", {"shares": {}}, format="json")
    assert (early.status_code, early.json()["code"]) == (409, "secagg_stage")
    unknown = apis[1].post(f"{base}{view['id']}/finish/", {}, format="json")
    assert (unknown.status_code, unknown.json()["code"]) == (400, "secagg_invalid")
    size = (view["length"] + 1) * 8
    wrong_size = apis[1].generic(
        "PUT",
        f"{base}{view['id']}/masked_input/",
        b"\0" * (size - 8),
        content_type="application/octet-stream",
    )
    assert (wrong_size.status_code, wrong_size.json()["code"]) == (400, "secagg_invalid")
    out_of_stage = apis[1].generic(
        "PUT", f"{base}{view['id']}/masked_input/", b"\0" * size, content_type="application/octet-stream"
    )
    assert (out_of_stage.status_code, out_of_stage.json()["code"]) == (409, "secagg_stage")
    assert not [f for f in stored_files() if f.startswith("secure/")]
    # a plain update is refused before a byte is stored
    plain = upload(apis[2], secure.pk, safetensors(), x_fma_num_examples="1")
    assert (plain.status_code, plain.json()["code"]) == (409, "secure_aggregation")
    assert not ModelUpdate.objects.exists()
    assert SecureRoundRow.objects.get().state["keys"].keys() == {apis[0].uuid}


def test_a_plain_experiment_has_no_secure_round_and_strangers_none_at_all(experiment, secure, enroll):
    plain = enroll(experiment).get(f"/api/v1/models/{experiment.pk}/secure_round/")
    assert (plain.status_code, plain.json()["code"]) == (409, "not_secure_aggregation")
    stranger = enroll(experiment).get(f"/api/v1/models/{secure.pk}/secure_round/")
    assert stranger.status_code == 404
    assert not SecureRoundRow.objects.exists()
