"""The record each room of an account keeps on the broker, and how it is read.

`<prefix>/_account/<account>/<room_id>`, retained JSON: `Record` below (an example:
docs/mqtt.md). Rates are per minute; `sent`, `shed` and `rejected` (429s) count the last
minute; `at` is the publisher's wall time; `hold_s` is what is left of its last 429's
Retry-After. Anything that does not read as a record (over `MAX_RECORD_BYTES`, not JSON,
a negative or non-finite number, a field missing) is refused with ValueError.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daemon.fleet.share import Amount, Demand, Share

MAX_RECORD_BYTES = 4096
HEARTBEAT_S = 2.0
Number = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=1_000_000_000)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Name = Annotated[str, Field(max_length=128)]


def account_topics(prefix: str, account: str) -> str:
    """The topic filter of every record of `account`."""
    return f"{prefix}/_account/{account}/+"


def record_topic(prefix: str, account: str, room_id: str) -> str:
    return f"{prefix}/_account/{account}/{room_id}"


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class AmountDoc(_Part):
    requests: Number = 0.0
    tokens: Number = 0.0

    @classmethod
    def of(cls, amount: Amount) -> AmountDoc:
        return cls(requests=round(amount.requests, 2), tokens=round(amount.tokens))

    @property
    def amount(self) -> Amount:
        return Amount(self.requests, self.tokens)


class DemandDoc(_Part):
    speech: AmountDoc = AmountDoc()
    extra: AmountDoc = AmountDoc()

    @classmethod
    def of(cls, demand: Demand) -> DemandDoc:
        return cls(speech=AmountDoc.of(demand.speech), extra=AmountDoc.of(demand.extra))

    @property
    def demand(self) -> Demand:
        return Demand(self.speech.amount, self.extra.amount)


class ShareDoc(_Part):
    requests: Number = 0.0
    tokens: Number = 0.0
    extra_requests: Number = 0.0
    extra_tokens: Number = 0.0
    speech_fraction: Fraction = 1.0
    extra_fraction: Fraction = 1.0
    rooms: Count = 1

    @classmethod
    def of(cls, share: Share) -> ShareDoc:
        return cls(
            requests=round(share.total.requests, 2),
            tokens=round(share.total.tokens),
            extra_requests=round(share.extra.requests, 2),
            extra_tokens=round(share.extra.tokens),
            speech_fraction=round(min(1.0, share.speech_fraction), 3),
            extra_fraction=round(min(1.0, share.extra_fraction), 3),
            rooms=share.rooms,
        )


class ShedDoc(_Part):
    speech: Count = 0
    extra: Count = 0


class Record(_Part):
    """One room's record (module docstring)."""

    room_id: Name
    device_id: Name = ""
    at: Number
    heartbeat_s: Number = HEARTBEAT_S
    limits: AmountDoc
    demand: DemandDoc = DemandDoc()
    sent: AmountDoc = AmountDoc()
    share: ShareDoc = ShareDoc()
    shed: ShedDoc = ShedDoc()
    rejected: Count = 0
    hold_s: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] = 0.0

    def encode(self) -> bytes:
        return self.model_dump_json().encode("utf-8")


def read_record(payload: bytes) -> Record:
    """The record in `payload`; ValueError saying why it is not one."""
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(f"{len(payload)} bytes; at most {MAX_RECORD_BYTES}")
    try:
        return Record.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "record"
        raise ValueError(f"{where}: {first.get('msg', 'invalid')}") from None
