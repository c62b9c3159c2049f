"""Redaction: secrets and personal data kept out of what is shown or kept for people to read.

:func:`redact` returns a copy of a value (mappings, lists and strings, however nested) where

- the value of every field whose name is sensitive is replaced by :data:`REDACTED`: names that say
  secret (password, secret, token, api key, authorization, credential, private key, card number, cvv,
  ssn) and the fields a spec marks ``sensitive`` (:func:`mark_sensitive`); a field given as a name and a
  value (``{"name": "api_key", "value": …}``) too (:func:`_named_value`);
- inside every string, bearer tokens, well-known API key shapes, e-mail addresses and card numbers (13 to
  19 digits passing the Luhn check) are replaced by :data:`REDACTED`, except in the fields that name who or
  what a record belongs to (:data:`IDENTITY_FIELDS`: a user named by an e-mail address, a business key
  holding a long number), which are kept as written unless a spec marks them sensitive: an answer says who
  did what.

It is the one redaction mechanism, applied wherever values leave the journey for people: logs, API
responses and streams (the event log's history among them), the dashboard, span attributes and the
exceptions spans record, and metric label values (:func:`redact_label`, which also cuts them short). An
API answer goes through :func:`redact_envelope`: a spec's marks apply to the journey values it carries,
never to the answer's own fields. Journey state, the inputs of runs and the event log itself are not
redacted: recovery replays a journey from its log (a start's input, a logged call's output), and a value
the journey needs still reaches its agents. Encrypt them at rest instead (:mod:`checkpoints.encryption`).

Marks are known per process, once a design is loaded there, and apply to every journey it shows. So what
is kept only to be shown (a server run's output and stream chunks) is redacted where the journey ran, and
the server's API learns a journey's marks before it shows its values (``ServerServices.know_marks``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

REDACTED = "[REDACTED]"

# A name that is, or ends in, one of these words (``password``, ``openai_api_key``, ``access_token``), not
# one that merely contains it (``total_tokens`` is a count).
_SECRET_NAME = re.compile(
    r"(?:^|[_\-.])(?:pass(?:word|wd|phrase)?|pwd|secret(?:[_-]?key)?|token|api[_-]?key|apikey|"
    r"authori[sz]ation|credentials?|private[_-]?key|access[_-]?key|card[_-]?number|cvv|cvc|ssn)$",
    re.IGNORECASE,
)
_PATTERNS = re.compile(
    "|".join(
        (
            r"\bBearer\s+[A-Za-z0-9\-._~+/]+=*",  # an Authorization header's bearer token
            r"\b(?:sk|pk|rk)[-_](?:live[-_]|test[-_]|proj[-_])?[A-Za-z0-9]{16,}",  # OpenAI/Stripe-style keys
            r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}",  # GitHub tokens
            r"\bxox[abprs]-[A-Za-z0-9-]{10,}",  # Slack tokens
            r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key ids
            r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",  # JWTs
            # e-mail addresses, matched from the start of a run only, so the work is linear in the text
            r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
        )
    )
)
# ``password=…`` or ``api_key: …`` written inside free text (a message, a name): the value after the name.
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b((?:pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key)"
    r"\s*[=:]\s*)[^\s,;&]+"
)
# A card number stands alone: not a piece of a longer identifier (the digit groups of a UUID, ``run-4111…``),
# which would otherwise pass for one whenever its digits happen to pass the Luhn check.
_CARD = re.compile(r"(?<![\w-])(?:\d[ -]?){12,18}\d(?![\w-])")
_SENSITIVE: set[str] = set()  # field names specs mark sensitive, lower-cased
# Users, groups, clients and keys that identify a record: the index row's keys (also as an instance's first
# event records them), the inbox's people and groups, a lifecycle's client, a process's business and
# correlation keys. Their values are not searched for secret-looking text.
IDENTITY_FIELDS = frozenset(
    {
        "user_id",
        "instance_user",
        "journey_id",
        "instance_design",
        "by",
        "assignee",
        "claimed_by",
        "completed_by",
        "candidate_groups",
        "client_id",
        "business_key",
        "correlation_key",
    }
)


def mark_sensitive(fields: Iterable[str]) -> None:
    """Redact the fields named ``fields`` wherever they appear (a spec's ``sensitive`` fields)."""
    _SENSITIVE.update(name.lower() for name in fields)


def mark_sensitive_of(spec: Any) -> None:
    """Mark the fields a spec given as data marks ``sensitive`` (a stored design, a run's inline spec),
    without validating the rest of it; anything that is not a list of names marks nothing."""
    fields = spec.get("sensitive") if isinstance(spec, Mapping) else None
    if isinstance(fields, list | tuple) and all(isinstance(name, str) for name in fields):
        mark_sensitive(fields)


def is_sensitive(name: str) -> bool:
    """Whether a field of this name holds a secret (by its name, or a spec marked it sensitive)."""
    return name.lower() in _SENSITIVE or _secret_name(name)


@lru_cache(maxsize=4096)
def _secret_name(name: str) -> bool:
    # Field names repeat (a payload's keys); the marked set is checked uncached, as it grows.
    return _SECRET_NAME.search(name) is not None


def _luhn(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    return REDACTED if 13 <= len(digits) <= 19 and _luhn(digits) else match.group(0)


def redact_text(text: str) -> str:
    """``text`` with tokens, keys, ``password=…`` values, e-mail addresses and card numbers replaced."""
    # Each pass runs only when its text can match (most texts are names, ids and times that cannot). Every
    # match of ``_PATTERNS`` holds one of these literals (its alternatives' starts, case-sensitive there:
    # ``k-``/``k_`` for the sk/pk/rk keys, ``gh``/``github_pat_`` for GitHub's, ``@`` for an e-mail address);
    # an assignment holds ``=`` or ``:``.
    if (
        "@" in text
        or "Bearer" in text
        or "AKIA" in text
        or "eyJ" in text
        or "xox" in text
        or "k-" in text
        or "k_" in text
        or "gh" in text
        or "github_pat_" in text
    ):
        text = _PATTERNS.sub(REDACTED, text)
    if "=" in text or ":" in text:
        text = _SECRET_ASSIGNMENT.sub(lambda match: match.group(1) + REDACTED, text)
    return _CARD.sub(_card, text)


MAX_LABEL_CHARS = 100


@lru_cache(maxsize=4096)
def redact_label(value: str, limit: int = MAX_LABEL_CHARS) -> str:
    """A metric label or span attribute value: :func:`redact_text`, cut at ``limit`` characters (a label
    comes from a spec a user wrote: an intent, a step or node name). Cached: labels are a small set, set on
    every step, and the result depends on nothing else."""
    return redact_text(value)[:limit]


def redact(value: Any, *, identities: bool = True) -> Any:
    """A copy of ``value`` with sensitive fields and secret-looking strings replaced (see the module), a
    field given as a name and a value too (:func:`_named_value`). ``identities``: the :data:`IDENTITY_FIELDS`
    kept as written (False: searched too, as event logs written before were)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        hidden = _named_value(value)
        return {
            key: REDACTED if key == hidden else redact_field(key, item, identities=identities)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item, identities=identities) for item in value]
    return value


def _named_value(pair: Mapping[Any, Any]) -> str | None:
    """``"value"`` when ``pair`` gives a field as a name and a value (``{"name": "api_key", "value": …}``: a
    process's variable changes) and that name is sensitive; None otherwise."""
    name = pair.get("name")
    if isinstance(name, str) and pair.get("value") is not None and is_sensitive(name):
        return "value"
    return None


def redact_field(name: Any, value: Any, own_fields: frozenset[str] = frozenset(), *, identities: bool = True) -> Any:
    """The value of the field ``name`` as it may be shown: :data:`REDACTED` if the name is sensitive, else
    :func:`redact`; a field of ``own_fields`` (an envelope's own: see :func:`redact_envelope`) is searched as
    the envelope."""
    if name in own_fields:
        return redact_envelope(value, own_fields)
    if isinstance(name, str) and is_sensitive(name) and value is not None:
        return REDACTED
    if identities and name in IDENTITY_FIELDS and isinstance(value, str | list):
        return value
    return redact(value, identities=identities)


def redact_envelope(value: Any, own_fields: frozenset[str]) -> Any:
    """:func:`redact` for a value that carries journey values inside an envelope of its own: an API answer
    (ids, status, timestamps, metadata) around a journey's state or a run's input.

    A field named in ``own_fields`` is the envelope's: the marks specs make do not apply to it, as a spec
    describes journey values, not the protocol (a design marking ``status`` sensitive must not blank every
    thread's status); it is searched as an envelope in turn. Every other field holds journey values and gets
    :func:`redact`. Names that say secret and secret-looking strings are redacted everywhere."""
    if isinstance(value, Mapping):
        return {key: redact_field(key, item, own_fields) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_envelope(item, own_fields) for item in value]
    return redact(value)
