"""Server settings: where the store is, how runs execute, and who may call."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import structlog
from langgraph.types import Durability
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from checkpoints.locks import DEFAULT_LOCK_TIMEOUT_S
from checkpoints.ownership import DEFAULT_TENANT
from checkpoints.retention import RetentionPolicy
from checkpoints.runs import TTL_SWEEP_MINUTES, ThreadTTL
from checkpoints.url import DEFAULT_STORE_URL, distributed_target
from server.problems import ApiKeysError, AuthenticatorError, InsecureServeError

log = structlog.get_logger("journeys.server")
ExecutionMode = Literal["embedded", "distributed"]
# read (assistants, threads, runs, journeys, tasks), runs (create/cancel runs, update thread state),
# journeys (journey operations), tasks (claim/complete user tasks), messages (send messages), admin (all).
# impersonate: act for another user_id than the caller's own (a user_id in a path or body).
# metrics: read /metrics, an operator's view counting every tenant's journeys (a scraper's key).
Scope = Literal["read", "runs", "journeys", "tasks", "messages", "impersonate", "metrics", "admin"]
SCOPES: tuple[str, ...] = get_args(Scope)
DIGEST_PREFIX = "sha256:"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` reaches only this machine (a name other than localhost may resolve to
    anything, so it counts as reachable)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def no_auth_warning(host: str, *, no_auth: bool, allow_insecure: bool) -> str | None:
    """What ``journeys serve`` says about running without API keys on ``host``; InsecureServeError when it
    must not: without keys beyond loopback unless the operator insists (``--allow-insecure``)."""
    if allow_insecure and not no_auth:
        raise InsecureServeError("--allow-insecure only goes with --no-auth (with API keys nothing is open)")
    if not no_auth:
        return None
    if not is_loopback(host) and not allow_insecure:
        raise InsecureServeError(
            f"--no-auth on --host {host} would let anyone who reaches this machine read and change every "
            "journey; listen on 127.0.0.1, configure API keys (--api-keys), or add --allow-insecure if you "
            "really mean it"
        )
    warning = (
        "warning: --no-auth: every request is served without an API key, as a local developer with every scope "
        "(for local development only)"
    )
    if not is_loopback(host):
        warning += f"; --host {host} makes it reachable from other machines"
    return warning


def key_digest(key: str) -> str:
    """How a keys file names a key: ``sha256:<hex>``. Keys are random (``journeys keys new``: 256 bits),
    so a fast unsalted hash is enough (there is no dictionary to try) and costs a request nothing."""
    return DIGEST_PREFIX + hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A caller: ``principal`` is who they are (the user a task is completed by), ``groups`` their groups,
    ``tenant`` whose objects they see, ``share_with`` the group what they create is shared with."""

    principal: str
    scopes: frozenset[str]
    groups: tuple[str, ...] = ()
    tenant: str = DEFAULT_TENANT
    share_with: str | None = None


def by_digest(api_keys: Mapping[str, ApiKey], source: str = "api_keys") -> dict[str, ApiKey]:
    """The keys by digest: ``sha256:…`` entries as they are, plain keys (older key files, keys set in
    code) hashed, so no plain key outlives loading."""
    found: dict[str, ApiKey] = {}
    for key, entry in api_keys.items():
        if key[: len(DIGEST_PREFIX)].lower() == DIGEST_PREFIX:
            digest = key.lower()
            if not _DIGEST.fullmatch(digest):
                raise ApiKeysError(
                    f"{source}: entry '{key[:15]}…' of principal {entry.principal!r}: "
                    "a digest is 'sha256:' and 64 hex digits"
                )
        else:
            digest = key_digest(key)
        found[digest] = entry
    return found


@dataclass(frozen=True, slots=True)
class InputLimits:
    """What one request may carry. A body over ``max_body_bytes`` is refused (413) before it is read; a
    JSON body nested deeper than ``max_depth`` (the document itself is level 1) or holding a string or key
    longer than ``max_string_chars`` is refused (422) before it is parsed for its route. A request line and
    headers over ``max_head_bytes`` (431), and a request not read in full within ``read_seconds`` (408), are
    refused by the connection (server/connections.py)."""

    max_body_bytes: int = 2**20
    max_depth: int = 64
    max_string_chars: int = 65_536
    max_head_bytes: int = 32_768
    read_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class Settings:
    """How the server runs: where the store is, how runs execute, and who may call."""

    database_url: str = DEFAULT_STORE_URL
    auth: bool = True
    # Keyed by digest (``sha256:<hex>``, see :func:`key_digest`); plain keys given here are hashed on creation.
    api_keys: dict[str, ApiKey] = field(default_factory=dict)
    # embedded: runs and timers execute in this process. distributed: they are queued in PostgreSQL
    # (procrastinate) for `journeys worker` processes, and this process only serves HTTP.
    execution: ExecutionMode = "embedded"
    run_timers: bool = True
    concurrency: int = 8  # embedded mode: runs executing at once in this process (a worker has its own)
    # Waiting requests wake on a change notice (in-process, or PostgreSQL NOTIFY from workers); this is
    # only the fallback re-read, for a notice lost while the listening connection reconnects (a waiter skips it
    # while the listener's probes come back: server/runs/watch.py).
    poll_interval: float = 1.0
    # A request waiting for a run (runs.wait, runs.join) sends a newline this often (seconds) until its answer,
    # as the Agent Server does: a proxy's idle timeout (nginx's is 60 s) does not cut a long wait.
    wait_keepalive: float = 5.0
    # Event streams (SSE) one caller may hold open in this process at once: each re-reads its run or thread
    # every poll_interval (server/stream_slots.py); one more is refused, 429.
    max_streams_per_caller: int = 100
    # How runs of journeys whose steps are logged (structured) checkpoint. "exit": when the run stops (at a
    # human task, a failure or the end); a run retried after a crash replays its logged steps instead of
    # executing them again. "async"/"sync": after every step too, so thread state shows progress mid-run.
    durability: Durability = "exit"
    # ``module:factory``: a zero-argument factory of the langchain-core chat model the guide phrases its
    # answers with (agents/guide_model.py). None: the offline DeterministicGuideModel.
    guide_model: str | None = None
    limits: InputLimits = field(default_factory=InputLimits)
    # The custom-auth hook (server.auth.Authenticator): None for API keys (server.auth.ApiKeyAuth), an
    # object, or ``module:factory`` (a factory taking these settings).
    authenticator: Any = None
    # Browser origins (``https://app.example.com``) whose pages may call the API (CORS). Empty: CORS is off,
    # and a browser lets no page of another origin read an answer. ``*`` allows every origin.
    cors_origins: tuple[str, ...] = ()
    # What finished journeys keep of their checkpoints (checkpoints.retention), and how often (seconds) the
    # embedded server applies it (0: never; distributed mode: the workers' periodic retention job).
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    retention_every: float = 600.0
    # The time-to-live of a thread created without one of its own (the Agent Server's checkpointer.ttl
    # default_ttl and strategy): deleted (or pruned) that long after its last activity. None: threads stay.
    thread_ttl: ThreadTTL | None = None
    # How often (seconds) the embedded server sweeps the threads whose TTL has passed (the Agent Server's
    # sweep_interval_minutes; 0: never; distributed mode: the workers' periodic job).
    thread_ttl_sweep_every: float = TTL_SWEEP_MINUTES * 60
    # Seconds a call waits for a journey another call (of this process or another) works on, before it answers
    # 409 ConcurrentUpdateError (embedded mode: a run then waits as long; distributed: the workers' own setting).
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S

    @property
    def holds_agents(self) -> bool:
        """Whether this process's agents are the ones its runs call, so that what it is asked to create (a run,
        a batch, a cron, a process deployment) is refused at once for an agent it has not registered: embedded
        mode. In distributed mode the workers hold the agents (an API process may import none of them) and
        check them as they run; the design's own errors are refused either way."""
        return self.execution == "embedded"

    def __post_init__(self) -> None:
        if not self.auth and self.authenticator is not None:
            # Half of each: the API authenticated through the hook while the dashboard and the CLI said every
            # caller was the local developer with every scope.
            raise AuthenticatorError(
                "--no-auth (auth=False) serves every caller as the local developer, while --auth (an "
                "authenticator) authenticates them: give one or the other"
            )
        object.__setattr__(self, "api_keys", by_digest(self.api_keys))
        if self.execution == "distributed":
            distributed_target(self.database_url)  # refused here, not at startup: workers share PostgreSQL


class _KeyEntry(BaseModel):
    """One entry of a keys file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    principal: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    tenant: str = Field(default=DEFAULT_TENANT, min_length=1, max_length=100)
    share_with: str | None = Field(default=None, min_length=1, max_length=200)


def api_key(entry: Any, name: str) -> ApiKey:
    """An entry checked: a principal, known scopes, no unknown fields (a typo like ``scope`` would
    otherwise leave a key silently without scopes)."""
    if not isinstance(entry, dict):
        raise ApiKeysError(f"{name}: must be an object with principal, scopes and groups")
    try:
        checked = _KeyEntry.model_validate(entry)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ApiKeysError(f"{name}: {'; '.join(problems)}", problems=problems) from None
    return ApiKey(
        checked.principal, frozenset(checked.scopes), tuple(checked.groups), checked.tenant, checked.share_with
    )


def load_api_keys(path: str | Path | None = None) -> dict[str, ApiKey]:
    """API keys from a JSON file (``{"sha256:<hex digest of the key>": {"principal": …, "scopes": […],
    "groups": […]}}``) or, without one, from the ``JOURNEYS_API_KEYS`` environment variable holding the
    same JSON. Plain keys in place of digests still work, with a warning."""
    source = str(path) if path else "$JOURNEYS_API_KEYS"
    try:
        data = json.loads(Path(path).read_text() if path else os.environ.get("JOURNEYS_API_KEYS", "{}"))
    except OSError as exc:
        raise ApiKeysError(f"{source}: cannot read the keys file ({exc.strerror})") from None
    except ValueError as exc:  # the message names the position, never the text (which holds keys)
        raise ApiKeysError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ApiKeysError(f"{source}: must be a JSON object mapping each key's digest to its entry")
    keys = {
        key: api_key(entry, f"{source}: {_entry_name(n, key, entry)}") for n, (key, entry) in enumerate(data.items(), 1)
    }
    plain = [entry.principal for key, entry in keys.items() if not key.lower().startswith(DIGEST_PREFIX)]
    if plain:
        log.warning(
            "API keys are stored in plain text",
            source=source,
            principals=plain,
            hint="replace each key by its digest: journeys keys digest",
        )
    return by_digest(keys, source)


def _entry_name(position: int, key: str, entry: Any) -> str:
    """Names an entry in an error without printing a plain key (a secret)."""
    name = f"entry '{key[:15]}…'" if key.lower().startswith(DIGEST_PREFIX) else f"entry {position} (a plain key)"
    principal = entry.get("principal") if isinstance(entry, dict) else None
    return f"{name} of principal {principal!r}" if isinstance(principal, str) else name
