"""Encryption at rest, with LangGraph's own :class:`~langgraph.checkpoint.serde.encrypted.EncryptedSerializer`
(AES in EAX mode, through pycryptodome).

When a key is configured (``JourneyRuntime.open(encryption_key=...)``, or the ``JOURNEYS_ENCRYPTION_KEY``
environment variable: 16, 24 or 32 bytes), the checkpointer writes every checkpoint and pending write
encrypted, and the server's run records keep their inputs, resume commands, outputs and stream chunks
sealed (:class:`Sealer`), as do the event log's payloads, a process's answers and messages
(``checkpoints.process``) and a lifecycle's caller data (``checkpoints.lifecycle.SEALED_COLUMNS``).
Without a key all are stored as before; data written before a key was set still reads (LangGraph's
serializer tells unencrypted rows by their type, and a sealed value is a ``{"__sealed__": …}`` record).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.errors import EncryptionKeyError
from checkpoints.rows import insert_ignore
from checkpoints.schema.tables import encryption_canary, journey_events

KEY_VARIABLE = "JOURNEYS_ENCRYPTION_KEY"
_GIVE_THE_KEY = f"give every process the key the database was encrypted with (${KEY_VARIABLE} or encryption_key=)"
SEALED = "__sealed__"  # a sealed JSON value: {"__sealed__": "<serializer type>", "data": "<base64>"}
_SEALED_TEXT = json.dumps({SEALED: ""})[: len(SEALED) + 3]  # how a sealed value kept in a text column begins


def strict_serializer() -> JsonPlusSerializer:
    """Journey state holds only JSON-like values, so msgpack may revive no custom classes."""
    return JsonPlusSerializer(allowed_msgpack_modules=None)


def configured_key(key: bytes | str | None = None) -> bytes | None:
    """The key given, else ``$JOURNEYS_ENCRYPTION_KEY``, else None (no encryption); checked for its length."""
    chosen = key if key is not None else os.environ.get(KEY_VARIABLE) or None
    if chosen is None:
        return None
    raw = chosen.encode() if isinstance(chosen, str) else chosen
    if len(raw) not in (16, 24, 32):
        raise EncryptionKeyError(f"the encryption key is {len(raw)} bytes long; give 16, 24 or 32 bytes")
    return raw


def checkpoint_serializer(key: bytes | None) -> SerializerProtocol:
    """The checkpointer's serializer: strict msgpack, encrypted when there is a key."""
    strict = strict_serializer()
    return EncryptedSerializer.from_pycryptodome_aes(strict, key=key) if key else strict


class Sealer:
    """Seals JSON values stored in our own tables with the checkpoints' serializer (a no-op without a key)."""

    def __init__(self, key: bytes | None) -> None:
        self._serde = checkpoint_serializer(key) if key else None

    @property
    def enabled(self) -> bool:
        return self._serde is not None

    def seal(self, value: Any) -> Any:
        if value is None or self._serde is None:
            return value
        kind, data = self._serde.dumps_typed(value)
        return {SEALED: kind, "data": base64.b64encode(data).decode()}

    def open(self, value: Any) -> Any:
        if not (isinstance(value, dict) and SEALED in value):
            return value
        if self._serde is None:
            raise EncryptionKeyError(f"this record is encrypted; {_GIVE_THE_KEY}")
        try:
            return self._serde.loads_typed((value[SEALED], base64.b64decode(value["data"])))
        except (ValueError, KeyError):  # the cipher's "MAC check failed": sealed with another key
            raise EncryptionKeyError(f"this record was encrypted with another key; {_GIVE_THE_KEY}") from None

    def seal_text(self, text: str | None) -> str | None:
        """``text`` for a text column: the sealed value as JSON text (as is without a key)."""
        if text is None or self._serde is None:
            return text
        return json.dumps(self.seal(text))

    def open_text(self, text: str | None) -> str | None:
        """A text column's value as :meth:`seal_text` stored it (text stored in clear reads as is)."""
        if text is None or not text.startswith(_SEALED_TEXT):
            return text
        return str(self.open(json.loads(text)))

    def seal_in(self, record: Mapping[Any, Any], field: str) -> dict[str, Any]:
        """``record`` with its ``field`` sealed, the rest left readable by SQL (kinds, ids, correlation keys)."""
        if self._serde is None or record.get(field) is None:
            return dict(record)
        return {**record, field: self.seal(record[field])}

    def open_in(self, record: Mapping[Any, Any], field: str) -> dict[str, Any]:
        """``record`` with its ``field`` opened (as :meth:`seal_in` sealed it; a value stored in clear reads as is)."""
        if field not in record:
            return dict(record)
        return {**record, field: self.open(record[field])}


# What the key's proof seals (a row of ``journeys_encryption``): any value would do; it is only ever opened.
_PROOF_NAME, _PROOF = "key", "journeys"


async def check_key(engine: AsyncEngine, sealer: Sealer, now: datetime) -> None:
    """Refuse, as a process opens the database, a key it was not encrypted with, or no key when it is
    encrypted: every later read would fail. The first process given a key keeps the proof (a value sealed
    with it); a database encrypted before the proof was kept is judged by its latest event."""
    async with engine.connect() as conn:
        proof = (await conn.execute(_READ_PROOF)).scalar()
        sealed = json.loads(proof) if proof is not None else (await conn.execute(_LATEST_EVENT)).scalar()
    if isinstance(sealed, dict) and SEALED in sealed:
        if not sealer.enabled:
            raise EncryptionKeyError(f"this database is encrypted; {_GIVE_THE_KEY}")
        try:
            sealer.open(sealed)
        except EncryptionKeyError:
            raise EncryptionKeyError(f"the encryption key is not this database's; {_GIVE_THE_KEY}") from None
    if proof is None and sealer.enabled:
        values = {"name": _PROOF_NAME, "sealed": sealer.seal_text(_PROOF), "written_at": now}
        async with engine.begin() as conn:  # two processes opening at once: the first proof is kept
            await conn.execute(insert_ignore(engine, encryption_canary, **values))


_READ_PROOF = select(encryption_canary.c.sealed).where(encryption_canary.c.name == _PROOF_NAME)
_LATEST_EVENT = (
    select(journey_events.c.payload)
    .order_by(journey_events.c.instance_no.desc(), journey_events.c.seq.desc())  # the primary key, backwards
    .limit(1)
)
