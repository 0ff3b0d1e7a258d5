"""The client's side of a secure round (SecAgg+): what ``Client.push`` runs when the experiment
aggregates securely, so a training script looks the same.

The protocol itself is ``fma_core.secagg`` (installed with ``pip install 'fma-client[secure]'``):
the same code the server runs. This module only moves its messages: it follows the round the
server opens, answers each stage it is asked to (advertise keys, share keys, masked input,
unmasking), and waits between stages, asking again at a short interval, until the round is unmasked
(the result names the aggregate) or fails (``SecureRoundFailed`` with the server's reason). Every
request is safe to repeat (the server keeps a client's first answer to a stage), so the transport's
retries apply to all of them.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from fma_client.errors import FmaClientError
from fma_client.transport import Transport

POLL_SECONDS = 0.25
POLL_MAX_SECONDS = 5.0


class SecureRoundFailed(FmaClientError):
    """The secure round ended without an aggregate (too few clients remained), or went on without this client."""


class SecurePush(Mapping[str, Any]):
    """What a secure push did: the round, its aggregate, and how many clients finished each stage.

    A read-only mapping like the other results (``pushed.get("id")`` is None: no update is kept),
    with ``round``, ``aggregate`` and ``counts`` attributes.
    """

    def __init__(self, round: int, aggregate: int, counts: Mapping[str, int]) -> None:
        self._fields = {"round": round, "aggregate": aggregate, "counts": dict(counts)}

    round = property(lambda self: self._fields["round"])
    aggregate = property(lambda self: self._fields["aggregate"])
    counts = property(lambda self: self._fields["counts"])

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"SecurePush({self._fields})"


def _protocol() -> Any:
    try:
        from fma_core import secagg
    except ImportError:
        raise FmaClientError(
            "this experiment aggregates securely, and the protocol is not installed: "
            "pip install 'fma-client[secure]'"
        ) from None
    return secagg


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def secure_push(
    transport: Transport,
    experiment: int,
    client_id: str,
    weights: Mapping[str, np.ndarray],
    num_examples: int,
    *,
    wait: float | None = None,
) -> SecurePush:
    """Take part in the experiment's current secure round with ``weights``; return once it is unmasked.

    ``wait``: the longest time to wait for the round to end (default: four stage deadlines from now).
    """
    secagg = _protocol()
    path = f"api/v1/models/{int(experiment)}/secure_round/"
    view = transport.json("GET", path)
    round_id = view["id"]
    give_up = time.monotonic() + (wait if wait is not None else 4 * _stage_seconds(view) + 60)
    session = None
    pause = POLL_SECONDS
    while True:
        action = view["action"]
        if session is None and action != "advertise":
            # this client has not joined this round: it started without it (or is ending); wait for the next
            _wait_or_give_up(give_up, pause, view)
            pause = min(pause * 1.5, POLL_MAX_SECONDS)
            view = transport.json("GET", path)
            round_id = view["id"]
            continue
        if action == "done":
            return SecurePush(int(view["round"]), int(view["aggregate"]), dict(view["counts"]))
        if action == "failed":
            raise SecureRoundFailed(
                f"secure round {view['round']} failed: {view['reason']}", code="secagg_failed"
            )
        if action in ("dropped", "not_invited"):
            raise SecureRoundFailed(
                f"secure round {view['round']} went on without this client: it did not answer the "
                f"{view['stage'].replace('_', ' ')} stage before its deadline; push again for the next round",
                code="secagg_dropped",
            )
        stage_path = f"{path}{round_id}/{action}/"
        if action == "advertise":
            session = secagg.ClientSession(client_id, secagg.RoundParams.from_json(view["params"]))
            keys = session.advertise()
            body = {"encryption": _b64(keys.encryption), "masking": _b64(keys.masking)}
            view = transport.json("POST", stage_path, json=body, idempotent=True)
        elif action == "share_keys":
            roster = {c: secagg.PublicKeys(_unb64(e), _unb64(m)) for c, (e, m) in view["roster"].items()}
            shares = {j: _b64(ct) for j, ct in session.share_keys(roster).items()}
            view = transport.json("POST", stage_path, json={"shares": shares}, idempotent=True)
        elif action == "masked_input":
            session.receive_shares({c: _unb64(ct) for c, ct in view["inbox"].items()})
            body = _masked_body(session, view, weights, num_examples)
            view = transport.json(
                "PUT",
                stage_path,
                body=body,
                headers={"Content-Type": "application/octet-stream"},
                idempotent=True,
            )
        elif action == "unmasking":
            revealed = [[s.owner, s.kind, _b64(s.value)] for s in session.unmask(view["survivors"])]
            view = transport.json("POST", stage_path, json={"shares": revealed}, idempotent=True)
        else:  # wait for the others, or the stage's deadline
            _wait_or_give_up(give_up, pause, view)
            pause = min(pause * 1.5, POLL_MAX_SECONDS)
            view = transport.json("GET", path, params={"id": round_id})
            continue
        pause = POLL_SECONDS


def _wait_or_give_up(give_up: float, pause: float, view: Mapping[str, Any]) -> None:
    if time.monotonic() > give_up:
        raise SecureRoundFailed(
            f"secure round {view['round']} did not end in time (stage {view['stage']!r})",
            code="secagg_timeout",
        )
    time.sleep(pause)


def _stage_seconds(view: Mapping[str, Any]) -> float:
    return max(1.0, float(view["deadline"]) - time.time())


def _masked_body(
    session: Any, view: Mapping[str, Any], weights: Mapping[str, np.ndarray], num_examples: int
) -> bytes:
    """The masked input: the weight, then the values in the server's tensor order, uint64 little-endian."""
    names = list(view["tensors"])
    missing = [n for n in names if n not in weights]
    if missing or len(names) != len(weights):
        raise FmaClientError(f"the update's tensors {sorted(weights)} are not the experiment's {names}")
    if sum(int(np.size(weights[n])) for n in names) != int(view["length"]):
        raise FmaClientError(
            f"the update holds a different number of values than the experiment's {view['length']}"
        )
    weight = int(num_examples) if view["weighted"] else 1
    blocks = (np.asarray(weights[n], dtype=np.float64).ravel() for n in names)
    return b"".join(block.astype("<u8").tobytes() for block in session.masked_input(blocks, weight))
