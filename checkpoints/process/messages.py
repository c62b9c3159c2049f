"""Message correlation: subscriptions of waiting instances, and the buffer for messages nobody waits for yet.

A message that matches no waiting subscription is kept for a time-to-live; a wait armed for it within
that time takes it (oldest first) when it arms. Expired messages are never delivered.

A message is sent for a tenant (as Camunda 8's are): it correlates only to the waits of that tenant's
instances (an instance with no tenant, started outside any request, is :data:`DEFAULT_TENANT`'s), its
buffered copy is taken only by them, and its sender's message id is unique within that tenant. A message
sent for :data:`EVERY_TENANT` (the runtime's own sends, an admin's) reaches any tenant's instances.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Executable, bindparam, delete, func, insert, literal, null, select, true, update
from sqlalchemy.exc import IntegrityError

from checkpoints.backends.base import Backend
from checkpoints.clock import Clock
from checkpoints.encryption import Sealer
from checkpoints.ownership import DEFAULT_TENANT
from checkpoints.rows import IgnoredRow, insert_ignore
from checkpoints.schema.tables import (
    journey_instances,
    process_message_ids,
    process_messages,
    process_subscriptions,
    process_waits,
)

# The tenant of a message sent for every tenant: no tenant's name (a tenant comes from an API key's entry).
EVERY_TENANT = "*"


def _instance_tenant(instance_id: ColumnElement[Any]) -> ColumnElement[Any]:
    """The tenant of the instance ``instance_id``: DEFAULT_TENANT for one with none (started outside a request)."""
    i = journey_instances.c
    owned = select(i.tenant).where(i.instance_id == instance_id).scalar_subquery()
    return func.coalesce(owned, DEFAULT_TENANT)


def _reaches(tenant: str, instance_id: ColumnElement[Any]) -> ColumnElement[bool]:
    """A message sent for ``tenant`` may resolve a wait of the instance ``instance_id``."""
    return _instance_tenant(instance_id) == tenant if tenant != EVERY_TENANT else true()


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
    tenant: str  # only this tenant's waits take it (EVERY_TENANT: any tenant's)


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
    tenant: str  # the id is unique within this tenant


# MessageStore.expire, built once: every worker's timer pass runs it once a second.
_EXPIRE = (
    update(process_messages)
    .where(
        process_messages.c.status == "buffered",
        process_messages.c.expires_at <= bindparam("p_now", type_=process_messages.c.expires_at.type),
    )
    .values(status="expired")
    .returning(process_messages.c.message_id)
)


class MessageStore:
    """Message subscriptions and the buffer of messages not yet correlated."""

    def __init__(self, backend: Backend, clock: Clock, sealer: Sealer | None = None) -> None:
        self._backend = backend
        self._engine = backend.engine
        self._clock = clock
        self._sealer = sealer or Sealer(None)  # seals a message's body when the store has a key

    def _buffered(self, row: Mapping[Any, Any]) -> BufferedMessage:
        return BufferedMessage(**self._sealer.open_in(row, "payload"))

    def subscribe_row(
        self, subscription_id: str, *, wait_id: str, instance_id: str, element: str, name: str, key: str
    ) -> IgnoredRow:
        """The subscription's row, written with the event that arms its wait (``EventLog.append``'s ``also``)."""
        return IgnoredRow(
            process_subscriptions,
            {
                "subscription_id": subscription_id,
                "wait_id": wait_id,
                "instance_id": instance_id,
                "element": element,
                "message_name": name,
                "correlation_key": key,
                "status": "waiting",
                "created_at": self._clock.now().astimezone(UTC),
            },
        )

    async def waiting(self, name: str, key: str, tenant: str) -> list[Subscription]:
        """The waiting subscriptions to (``name``, ``key``) that a message sent for ``tenant`` reaches."""
        s = process_subscriptions.c
        query = (
            select(process_subscriptions)
            .where(
                s.message_name == name, s.correlation_key == key, s.status == "waiting", _reaches(tenant, s.instance_id)
            )
            .order_by(s.created_at, s.subscription_id)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Subscription(**r._mapping) for r in rows]

    async def taken(self, name: str, key: str, message_id: str, tenant: str) -> list[Subscription]:
        """The subscriptions to (``name``, ``key``) that message ``message_id`` of ``tenant`` resolved the wait of,
        directly or from the buffer: what a send of it taken over (its sender died mid-way) finds done already."""
        s, w = process_subscriptions.c, process_waits.c
        query = (
            select(process_subscriptions)
            .join(process_waits, w.wait_id == s.wait_id)
            .where(
                s.message_name == name,
                s.correlation_key == key,
                s.status == "consumed",
                w.resolution["message_id"].as_string() == message_id,
                # A resolution written before migration 25 names no tenant: its message was for every tenant.
                func.coalesce(w.resolution["tenant"].as_string(), EVERY_TENANT) == tenant,
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
        self, tenant: str, message_id: str, name: str, key: str, payload: dict[str, Any], ttl: timedelta
    ) -> BufferedMessage:
        """Keep a message of ``tenant`` nobody waits for, for ``ttl``; the message as kept."""
        m = process_messages.c
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
                    tenant=tenant,
                )
            )
            row = (
                await conn.execute(select(process_messages).where(m.message_id == message_id, m.tenant == tenant))
            ).one()
        return self._buffered(row._mapping)

    async def claim_id(
        self, tenant: str, message_id: str, name: str, key: str, payload: dict[str, Any], window: timedelta
    ) -> SentMessage | None:
        """Claim ``message_id`` of ``tenant`` for a send of this message for ``window``: None when claimed now,
        else the message it was claimed for earlier (the unique id decides between concurrent senders)."""
        m = process_message_ids.c
        now = self._clock.now().astimezone(UTC)
        this = (m.message_id == message_id, m.tenant == tenant)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(delete(process_message_ids).where(*this, m.expires_at <= now))
                await conn.execute(
                    insert(process_message_ids).values(
                        message_id=message_id,
                        name=name,
                        correlation_key=key,
                        payload=self._sealer.seal(payload),
                        outcome=null(),  # SQL NULL (a JSON column keeps None as JSON null): under way
                        claimed_at=now,
                        expires_at=now + window,
                        tenant=tenant,
                    )
                )
            return None
        except IntegrityError:  # claimed before (and not expired): that claim is the answer
            pass
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(process_message_ids).where(*this))).one()
        return SentMessage(**self._sealer.open_in(row._mapping, "payload"))

    async def take_over_id(self, sent: SentMessage) -> bool:
        """Take over the unfinished send of ``sent`` (its sender died): False if another took it over first."""
        m = process_message_ids.c
        now = self._clock.now().astimezone(UTC)
        async with self._engine.begin() as conn:
            taken = await conn.execute(
                update(process_message_ids)
                .where(
                    m.message_id == sent.message_id,
                    m.tenant == sent.tenant,
                    m.outcome.is_(None),
                    m.claimed_at == sent.claimed_at,
                )
                .values(claimed_at=now)
            )
        return int(taken.rowcount) == 1

    async def settle_id(self, tenant: str, message_id: str, outcome: dict[str, Any] | None) -> None:
        """The send of ``message_id`` of ``tenant`` is done: ``outcome`` is what a repeat answers. None: it did
        nothing (it was refused), so the id is released and a repeat is a new send."""
        m = process_message_ids.c
        this = (m.message_id == message_id, m.tenant == tenant)
        async with self._engine.begin() as conn:
            if outcome is None:
                await conn.execute(delete(process_message_ids).where(*this))
            else:
                await conn.execute(update(process_message_ids).where(*this).values(outcome=outcome))

    async def buffered(self, name: str, key: str, instance_id: str) -> list[BufferedMessage]:
        """The unexpired buffered (``name``, ``key``) messages that a wait of ``instance_id`` may take, oldest
        first: those sent for its tenant or for every tenant."""
        m = process_messages.c
        now = self._clock.now().astimezone(UTC)
        tenants = (EVERY_TENANT, _instance_tenant(literal(instance_id)))
        query = (
            select(process_messages)
            .where(
                m.name == name,
                m.correlation_key == key,
                m.status == "buffered",
                m.expires_at > now,
                m.tenant.in_(tenants),
            )
            .order_by(m.received_at, m.message_id)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [self._buffered(row._mapping) for row in rows]

    def take_claim(self, buffered: BufferedMessage, consumer: str) -> Executable:
        m = process_messages.c
        now = self._clock.now().astimezone(UTC)
        return (
            update(process_messages)
            .where(
                m.message_id == buffered.message_id,
                m.tenant == buffered.tenant,
                m.status == "buffered",
                m.expires_at > now,
            )
            .values(status="consumed", consumed_by=consumer)
        )

    async def expire(self) -> int:
        expired = await self._backend.write([_EXPIRE], {"p_now": self._clock.now().astimezone(UTC)})
        return len(expired)

    async def find(self, *, name: str | None = None, status: str | None = None) -> list[BufferedMessage]:
        query = select(process_messages).order_by(process_messages.c.received_at)
        if name is not None:
            query = query.where(process_messages.c.name == name)
        if status is not None:
            query = query.where(process_messages.c.status == status)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [self._buffered(r._mapping) for r in rows]
