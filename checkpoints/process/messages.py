"""Message correlation: subscriptions of waiting instances, and the buffer for messages nobody waits for yet.

A message that matches no waiting subscription is kept for a time-to-live; a wait armed for it within
that time takes it (oldest first) when it arms. Expired messages are never delivered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Executable, delete, insert, null, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.clock import Clock
from checkpoints.encryption import Sealer
from checkpoints.rows import insert_ignore
from checkpoints.schema.tables import process_message_ids, process_messages, process_subscriptions, process_waits


@dataclass(frozen=True, slots=True)
class Subscription:
    """A waiting instance's interest in a message name and correlation key."""

    subscription_id: str
    wait_id: str
    instance_id: str
    element: str
    message_name: str
    correlation_key: str
    status: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class BufferedMessage:
    """A message that arrived before anyone waited for it, kept until it is taken or expires."""

    message_id: str
    name: str
    correlation_key: str
    payload: dict[str, Any]
    status: str
    received_at: datetime
    expires_at: datetime
    consumed_by: str | None


@dataclass(frozen=True, slots=True)
class SentMessage:
    """A message sent with its sender's message id, and what its send answered (None while under way)."""

    message_id: str
    name: str
    correlation_key: str
    payload: dict[str, Any]
    outcome: dict[str, Any] | None
    claimed_at: datetime
    expires_at: datetime


class MessageStore:
    """Message subscriptions and the buffer of messages not yet correlated."""

    def __init__(self, engine: AsyncEngine, clock: Clock, sealer: Sealer | None = None) -> None:
        self._engine = engine
        self._clock = clock
        self._sealer = sealer or Sealer(None)  # seals a message's body when the store has a key

    def _buffered(self, row: Mapping[Any, Any]) -> BufferedMessage:
        return BufferedMessage(**self._sealer.open_in(row, "payload"))

    def subscribe_statement(
        self, subscription_id: str, *, wait_id: str, instance_id: str, element: str, name: str, key: str
    ) -> Executable:
        return insert_ignore(
            self._engine,
            process_subscriptions,
            subscription_id=subscription_id,
            wait_id=wait_id,
            instance_id=instance_id,
            element=element,
            message_name=name,
            correlation_key=key,
            status="waiting",
            created_at=self._clock.now().astimezone(UTC),
        )

    async def waiting(self, name: str, key: str) -> list[Subscription]:
        s = process_subscriptions.c
        query = (
            select(process_subscriptions)
            .where(s.message_name == name, s.correlation_key == key, s.status == "waiting")
            .order_by(s.created_at, s.subscription_id)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Subscription(**r._mapping) for r in rows]

    async def taken(self, name: str, key: str, message_id: str) -> list[Subscription]:
        """The subscriptions to (``name``, ``key``) that message ``message_id`` resolved the wait of, directly or
        from the buffer: what a send of it taken over (its sender died mid-way) finds done already."""
        s, w = process_subscriptions.c, process_waits.c
        query = (
            select(process_subscriptions)
            .join(process_waits, w.wait_id == s.wait_id)
            .where(
                s.message_name == name,
                s.correlation_key == key,
                s.status == "consumed",
                w.resolution["message_id"].as_string() == message_id,
            )
            .order_by(s.created_at, s.subscription_id)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Subscription(**r._mapping) for r in rows]

    def consume_subscription_claim(self, subscription_id: str) -> Executable:
        s = process_subscriptions.c
        return (
            update(process_subscriptions)
            .where(s.subscription_id == subscription_id, s.status == "waiting")
            .values(status="consumed")
        )

    async def buffer(
        self, message_id: str, name: str, key: str, payload: dict[str, Any], ttl: timedelta
    ) -> BufferedMessage:
        """Keep a message nobody waits for, for ``ttl``; the message as kept."""
        now = self._clock.now().astimezone(UTC)
        async with self._engine.begin() as conn:
            await conn.execute(
                insert_ignore(  # kept before under this id (a send taken over after its sender died): the same
                    self._engine,
                    process_messages,
                    message_id=message_id,
                    name=name,
                    correlation_key=key,
                    payload=self._sealer.seal(payload),
                    status="buffered",
                    received_at=now,
                    expires_at=now + ttl,
                    consumed_by=None,
                )
            )
            row = (
                await conn.execute(select(process_messages).where(process_messages.c.message_id == message_id))
            ).one()
        return self._buffered(row._mapping)

    async def claim_id(
        self, message_id: str, name: str, key: str, payload: dict[str, Any], window: timedelta
    ) -> SentMessage | None:
        """Claim ``message_id`` for a send of this message for ``window``: None when claimed now, else the
        message it was claimed for earlier (the unique id decides between concurrent senders)."""
        m = process_message_ids.c
        now = self._clock.now().astimezone(UTC)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(delete(process_message_ids).where(m.message_id == message_id, m.expires_at <= now))
                await conn.execute(
                    insert(process_message_ids).values(
                        message_id=message_id,
                        name=name,
                        correlation_key=key,
                        payload=self._sealer.seal(payload),
                        outcome=null(),  # SQL NULL (a JSON column keeps None as JSON null): under way
                        claimed_at=now,
                        expires_at=now + window,
                    )
                )
            return None
        except IntegrityError:  # claimed before (and not expired): that claim is the answer
            pass
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(process_message_ids).where(m.message_id == message_id))).one()
        return SentMessage(**self._sealer.open_in(row._mapping, "payload"))

    async def take_over_id(self, sent: SentMessage) -> bool:
        """Take over the unfinished send of ``sent`` (its sender died): False if another took it over first."""
        m = process_message_ids.c
        now = self._clock.now().astimezone(UTC)
        async with self._engine.begin() as conn:
            taken = await conn.execute(
                update(process_message_ids)
                .where(m.message_id == sent.message_id, m.outcome.is_(None), m.claimed_at == sent.claimed_at)
                .values(claimed_at=now)
            )
        return int(taken.rowcount) == 1

    async def settle_id(self, message_id: str, outcome: dict[str, Any] | None) -> None:
        """The send of ``message_id`` is done: ``outcome`` is what a repeat answers. None: it did nothing (it
        was refused), so the id is released and a repeat is a new send."""
        m = process_message_ids.c
        async with self._engine.begin() as conn:
            if outcome is None:
                await conn.execute(delete(process_message_ids).where(m.message_id == message_id))
            else:
                await conn.execute(
                    update(process_message_ids).where(m.message_id == message_id).values(outcome=outcome)
                )

    async def oldest_buffered(self, name: str, key: str) -> BufferedMessage | None:
        m = process_messages.c
        now = self._clock.now().astimezone(UTC)
        query = (
            select(process_messages)
            .where(m.name == name, m.correlation_key == key, m.status == "buffered", m.expires_at > now)
            .order_by(m.received_at, m.message_id)
            .limit(1)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return self._buffered(row._mapping) if row else None

    def take_claim(self, message_id: str, consumer: str) -> Executable:
        m = process_messages.c
        now = self._clock.now().astimezone(UTC)
        return (
            update(process_messages)
            .where(m.message_id == message_id, m.status == "buffered", m.expires_at > now)
            .values(status="consumed", consumed_by=consumer)
        )

    async def expire(self) -> int:
        m = process_messages.c
        now = self._clock.now().astimezone(UTC)
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(process_messages).where(m.status == "buffered", m.expires_at <= now).values(status="expired")
            )
        return int(result.rowcount)

    async def find(self, *, name: str | None = None, status: str | None = None) -> list[BufferedMessage]:
        query = select(process_messages).order_by(process_messages.c.received_at)
        if name is not None:
            query = query.where(process_messages.c.name == name)
        if status is not None:
            query = query.where(process_messages.c.status == status)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [self._buffered(r._mapping) for r in rows]
