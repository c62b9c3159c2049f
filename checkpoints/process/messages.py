"""Message correlation: subscriptions of waiting instances, and the buffer for messages nobody waits for yet.

A message that matches no waiting subscription is kept for a time-to-live; a wait armed for it within
that time takes it (oldest first) when it arms. Expired messages are never delivered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Executable, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.clock import Clock
from checkpoints.rows import insert_ignore
from checkpoints.schema.tables import process_messages, process_subscriptions


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


class MessageStore:
    """Message subscriptions and the buffer of messages not yet correlated."""

    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

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
        message = BufferedMessage(message_id, name, key, payload, "buffered", now, now + ttl, None)
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(process_messages).values(
                    message_id=message_id,
                    name=name,
                    correlation_key=key,
                    payload=payload,
                    status="buffered",
                    received_at=now,
                    expires_at=now + ttl,
                    consumed_by=None,
                )
            )
        return message

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
        return BufferedMessage(**row._mapping) if row else None

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
        return [BufferedMessage(**r._mapping) for r in rows]
