"""The server's bookkeeping of one secure round: who reached which stage, until when, and what next.

A :class:`SecureRound` is plain data that round-trips through JSON (``to_json`` / ``from_json``), so a
service can keep it in one database row and change it under that row's lock: each client request is
one method call, and :meth:`SecureRound.advance` moves the round on when everyone expected has
answered or the stage's deadline has passed. A client that misses a stage is dropped from the rest of
the round; the round goes on while the protocol can still finish (at least t clients), and otherwise
fails with a reason that names counts, never a secret. When it fails, every secret-bearing field
(ciphertexts, revealed shares) is cleared, so nothing kept can later help unmask an input.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from fma_core.secagg.client import SEALED_SHARES_BYTES, PublicKeys, Share
from fma_core.secagg.params import RoundParams
from fma_core.secagg.server import InconsistentShares, NotEnoughShares, Unmasker, reconstruct_secrets

STAGES = ("advertise", "share_keys", "masked_input", "unmasking", "unmasked", "failed")
MIN_CLIENTS = 3  # with two, each learns the other's input from the sum


class StageError(Exception):
    """A request that does not fit the round's stage or the client's place in it (the 409 of a service)."""

    def __init__(self, message: str, code: str = "secagg_stage"):
        super().__init__(message)
        self.code = code


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass
class SecureRound:
    """One round's stage, deadline and the protocol messages the server relays or keeps."""

    params: RoundParams
    invited: list[str]
    length: int  # values in the update; the masked input carries one more, first (the weight)
    stage_seconds: float
    stage: str = "advertise"
    deadline: float = 0.0
    keys: dict[str, PublicKeys] = field(default_factory=dict)
    roster: list[str] = field(default_factory=list)
    outbox: dict[str, dict[str, bytes]] = field(default_factory=dict)
    shared: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # client → where its masked input is stored
    survivors: list[str] = field(default_factory=list)
    revealed: dict[str, list[Share]] = field(default_factory=dict)
    reason: str = ""
    counts: dict[str, int] = field(default_factory=dict)  # clients that finished each stage

    @classmethod
    def start(
        cls, params: RoundParams, invited: Iterable[str], length: int, stage_seconds: float, now: float
    ) -> SecureRound:
        invited = sorted(set(invited))
        field_capacity = params.field.capacity()
        if len(invited) > field_capacity:
            raise ValueError(f"{len(invited)} clients would overflow the field (at most {field_capacity})")
        return cls(params, invited, length, stage_seconds, deadline=now + stage_seconds)

    # -- the clients' requests ---------------------------------------------------------------------
    def advertise(self, client: str, keys: PublicKeys) -> None:
        self._expect("advertise", client, self.invited)
        known = self.keys.get(client)
        if known is not None and known != keys:
            raise StageError("this client already advertised other keys this round", "secagg_conflict")
        mine = {keys.encryption, keys.masking}
        if any(mine & {k.encryption, k.masking} for c, k in self.keys.items() if c != client):
            raise StageError("these keys are another client's", "secagg_conflict")
        self.keys[client] = keys

    def roster_keys(self, client: str) -> dict[str, PublicKeys]:
        self._expect("share_keys", client, self.roster)
        return {c: self.keys[c] for c in self.roster}

    def share_keys(self, client: str, ciphertexts: Mapping[str, bytes]) -> None:
        self._expect("share_keys", client, self.roster)
        neighbours = self.params.graph(self.roster)[client]
        if set(ciphertexts) != set(neighbours):
            raise StageError(
                "one encrypted share per neighbour is expected, no more, no fewer", "secagg_invalid"
            )
        wrong = sorted(j for j, sealed in ciphertexts.items() if len(sealed) != SEALED_SHARES_BYTES)
        if wrong:  # refused now, not relayed to a neighbour that could only abort on it
            raise ValueError(
                f"the encrypted shares for {', '.join(wrong[:3])} are not {SEALED_SHARES_BYTES} bytes"
            )
        known = self.outbox.get(client)
        if known is not None and known != dict(ciphertexts):
            raise StageError("this client already shared other keys this round", "secagg_conflict")
        self.outbox[client] = dict(ciphertexts)

    def inbox(self, client: str) -> dict[str, bytes]:
        """The shares addressed to ``client`` by the clients that finished the share-keys stage."""
        self._expect("masked_input", client, self.shared)
        return {
            sender: self.outbox[sender][client] for sender in self.shared if client in self.outbox[sender]
        }

    def masked_input(self, client: str, location: str) -> None:
        self._expect("masked_input", client, self.shared)
        known = self.inputs.get(client)
        if known is not None and known != location:
            raise StageError("this client already sent its masked input this round", "secagg_conflict")
        self.inputs[client] = location

    def survivors_for(self, client: str) -> list[str]:
        self._expect("unmasking", client, self.survivors)
        return list(self.survivors)

    def reveal(self, client: str, shares: list[Share]) -> None:
        self._expect("unmasking", client, self.survivors)
        known = self.revealed.get(client)
        if known is not None and known != shares:
            raise StageError("this client already revealed other shares this round", "secagg_conflict")
        self.revealed[client] = shares

    # -- the server's clock ------------------------------------------------------------------------
    def advance(self, now: float) -> Unmasker | None:
        """Move on as far as answers and deadlines allow; the Unmasker once the round can be unmasked.

        Returns None while a stage is still waiting, and also once the round has failed (``stage``
        ``"failed"``, ``reason`` says why).
        """
        while self.stage not in ("unmasked", "failed"):
            expected, answered = self._waiting_on()
            if len(answered) < len(expected) and now < self.deadline:
                return None
            unmasker = self._close_stage(now)
            if unmasker is not None:
                return unmasker
        return None

    def _waiting_on(self) -> tuple[list[str], Iterable[str]]:
        return {
            "advertise": (self.invited, self.keys),
            "share_keys": (self.roster, self.outbox),
            "masked_input": (self.shared, self.inputs),
            "unmasking": (self.survivors, self.revealed),
        }[self.stage]

    def _close_stage(self, now: float) -> Unmasker | None:
        self.deadline = now + self.stage_seconds
        if self.stage == "advertise":
            self.roster = sorted(self.keys)
            return self._advance(self.roster, MIN_CLIENTS, "advertised keys", "share_keys")
        if self.stage == "share_keys":
            self.shared = sorted(self.outbox)
            return self._advance(self.shared, self._needed(), "shared keys", "masked_input")
        if self.stage == "masked_input":
            self.survivors = sorted(self.inputs)
            return self._advance(self.survivors, self._needed(), "sent masked inputs", "unmasking")
        if self.stage == "unmasking":
            self.counts["unmasking"] = len(self.revealed)
            try:
                unmasker = reconstruct_secrets(
                    self.params,
                    {c: self.keys[c] for c in self.roster},
                    self.shared,
                    self.survivors,
                    self.revealed,
                    self.length,
                )
            except (NotEnoughShares, InconsistentShares) as error:
                return self._fail(
                    f"{len(self.revealed)} of {len(self.survivors)} survivors answered: {error}"
                )
            self.stage = "unmasked"
            return unmasker
        return None

    def _needed(self) -> int:
        """Clients a stage after the keys' must keep: enough to reconstruct the shares, and never fewer than
        the protocol's minimum."""
        return max(self.params.shares_needed(len(self.roster)), MIN_CLIENTS)

    def _advance(self, clients: list[str], needed: int, did: str, following: str) -> None:
        """Close a stage that ``clients`` finished: on to ``following``, or fail below ``needed``."""
        self.counts[self.stage] = len(clients)
        if len(clients) < needed:
            return self._fail(f"{len(clients)} clients {did}, at least {needed} needed")
        self.stage = following
        return None

    def unmasker(self) -> Unmasker:
        """The Unmasker of a round already unmasked (rebuilt from the kept shares, e.g. after a restart)."""
        if self.stage != "unmasked":
            raise StageError(f"the round is at stage {self.stage!r}, not unmasked")
        return reconstruct_secrets(
            self.params,
            {c: self.keys[c] for c in self.roster},
            self.shared,
            self.survivors,
            self.revealed,
            self.length,
        )

    def end(self, reason: str) -> None:
        """Fail a round whose aggregate is not recorded yet because its experiment ended (its shares
        are forgotten: nothing can be unmasked any more); a failed round stays as it is."""
        if self.stage != "failed":
            self._fail(reason)

    def _fail(self, reason: str) -> None:
        """Stop the round and forget what could help unmask any input."""
        self.stage = "failed"
        self.reason = reason
        self.outbox = {}
        self.revealed = {}
        return None

    def _expect(self, stage: str, client: str, members: Iterable[str]) -> None:
        if self.stage == "failed":
            raise StageError(f"the secure round failed: {self.reason}", "secagg_failed")
        if self.stage != stage:
            raise StageError(f"the secure round is at stage {self.stage!r}, not {stage!r}")
        if client not in members:
            raise StageError(
                f"this client is not taking part in the {stage.replace('_', ' ')} stage of this round",
                "secagg_dropped",
            )

    # -- persistence ---------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "params": self.params.as_json(),
            "invited": self.invited,
            "length": self.length,
            "stage_seconds": self.stage_seconds,
            "stage": self.stage,
            "deadline": self.deadline,
            "keys": {c: [_b64(k.encryption), _b64(k.masking)] for c, k in self.keys.items()},
            "roster": self.roster,
            "outbox": {s: {r: _b64(ct) for r, ct in box.items()} for s, box in self.outbox.items()},
            "shared": self.shared,
            "inputs": self.inputs,
            "survivors": self.survivors,
            "revealed": {
                c: [[s.owner, s.kind, _b64(s.value)] for s in shares] for c, shares in self.revealed.items()
            },
            "reason": self.reason,
            "counts": self.counts,
        }

    @classmethod
    def from_json(cls, data: dict) -> SecureRound:
        return cls(
            params=RoundParams.from_json(data["params"]),
            invited=list(data["invited"]),
            length=int(data["length"]),
            stage_seconds=float(data["stage_seconds"]),
            stage=data["stage"],
            deadline=float(data["deadline"]),
            keys={c: PublicKeys(_unb64(e), _unb64(m)) for c, (e, m) in data["keys"].items()},
            roster=list(data["roster"]),
            outbox={s: {r: _unb64(ct) for r, ct in box.items()} for s, box in data["outbox"].items()},
            shared=list(data["shared"]),
            inputs=dict(data["inputs"]),
            survivors=list(data["survivors"]),
            revealed={
                c: [Share(o, k, _unb64(v)) for o, k, v in shares] for c, shares in data["revealed"].items()
            },
            reason=data["reason"],
            counts=dict(data["counts"]),
        )
