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
from collections.abc import Iterable, Iterator, Mapping
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
            # e-mail addresses, matched from the start of a run only
            r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
        )
    )
)
# Up to this length a text goes through _PATTERNS and _SECRET_ASSIGNMENT as they are, in one C call each
# (the shapes' own searches below cost ~10 us a text to set up). _PATTERNS tries every shape at every
# position (~0.35 us a character on a run of "@") and rescans a JWT-like run from every "-eyJ" in it
# (quadratic: 128 KiB of "eyJ-" took 38 s), so a longer text goes through the shapes' own searches.
ONE_PASS_CHARS = 128
# A secret shape is found from its literal start (a fast scan for a fixed string), never tried at every
# position: each pattern below begins with its literal, the word boundary before it checked after it
# (``Bearer(?<!\wBearer)`` is ``\bBearer``). Possessive quantifiers where a run's end is fixed by the text, so
# that a failed try does not walk the run back. Together they redact exactly the spans one regex of all the
# shapes (:data:`_PATTERNS`) replaced, scanning left to right, the first shape listed winning at one start
# (:func:`_redact_tokens`), in time linear in the text.
_BEARER = r"Bearer(?<!\wBearer)\s++[A-Za-z0-9\-._~+/]++=*+"  # an Authorization header's bearer token
_KEY = r"{0}(?<!\w{0})[-_](?:live[-_]|test[-_]|proj[-_])?+[A-Za-z0-9]{{16,}}+"  # OpenAI/Stripe-style keys
_TOKENS = tuple(
    (pattern.split("(", 1)[0], re.compile(pattern))  # (its literal start, the pattern)
    for pattern in (
        _BEARER,
        _KEY.format("sk"),
        _KEY.format("pk"),
        _KEY.format("rk"),
        r"gh(?<!\wgh)[pousr]_[A-Za-z0-9_]{20,}+",  # GitHub tokens
        r"github_pat(?<!\wgithub_pat)_[A-Za-z0-9_]{20,}+",
        r"xox(?<!\wxox)[abprs]-[A-Za-z0-9-]{10,}+",  # Slack tokens
        r"AKIA(?<!\wAKIA)[0-9A-Z]{16}\b",  # AWS access key ids
    )
)
# JWTs: a try from an ``eyJ`` takes the whole run of token characters after it (and the two dotted parts
# after that, if they are there: group 1); a later ``eyJ`` in the same run ends at the same place, so it
# cannot match where the first did not, and the search goes on after the run.
_JWT = re.compile(r"eyJ(?<!\weyJ)[A-Za-z0-9_-]{10,}+(\.[A-Za-z0-9_-]{10,}+\.[A-Za-z0-9_-]{10,}+)?+")
# E-mail addresses: found from their ``@``; the address starts where the run of characters before it does.
_EMAIL_LOCAL = "A-Za-z0-9._%+-"
_EMAIL_AT = re.compile(rf"@(?<=[{_EMAIL_LOCAL}]@)[A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)*\.[A-Za-z]{{2,}}")
_EMAIL_LOCAL_RUN = re.compile(rf"[{_EMAIL_LOCAL}]*+")  # matched backwards, on the reversed text
# ``password=…`` or ``api_key: …`` written inside free text (a message, a name): the value after the name.
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b((?:pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key)"
    r"\s*[=:]\s*)[^\s,;&]+"
)
# A card number stands alone: not a piece of a longer identifier (the digit groups of a UUID, ``run-4111…``),
# which would otherwise pass for one whenever its digits happen to pass the Luhn check.
_CARD = re.compile(r"(?<![\w-])(?:\d[ -]?){12,18}\d(?![\w-])")
# The same, from its first digit, the boundary checked after it: the search skips text without digits at C
# speed (for a long text; a short one is faster through _CARD). The ASCII one: the same on ASCII text, 6x faster.
_CARD_FROM_DIGIT = re.compile(r"\d(?<![\w-]\d)(?:[ -]?\d){12,18}(?![\w-])")
_CARD_FROM_DIGIT_ASCII = re.compile(_CARD_FROM_DIGIT.pattern, re.ASCII)
# The assignments' names, spelled backwards, from the ``=`` or ``:`` after them: found from that character,
# on the reversed text (:func:`_assignment_starts`), where the name may start anywhere before it.
_ASSIGNMENT_BACKWARDS = re.compile(
    r"(?i)[=:]\s*+(?:(?:drow|dw|esarhp)?ssap|dwp|terces|nekot|yek[_-]?ipa|yekipa|yek[_-]?ssecca|yek[_-]?etavirp)"
    r"(?!\w)"
)
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


# A digit's value, and that digit doubled with its two digits summed (Luhn), as bytes: summed in C.
_DIGIT_VALUES = bytes.maketrans(b"0123456789", bytes(range(10)))
_DOUBLED_VALUES = bytes.maketrans(b"0123456789", bytes((0, 2, 4, 6, 8, 1, 3, 5, 7, 9)))
_CARD_SEPARATORS = str.maketrans("", "", " -")


def _luhn(digits: str) -> bool:
    if not digits.isascii():  # another script's digits
        digits = "".join(str(int(digit)) for digit in digits)
    data = digits.encode()
    return (sum(data[-1::-2].translate(_DIGIT_VALUES)) + sum(data[-2::-2].translate(_DOUBLED_VALUES))) % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = match.group(0).translate(_CARD_SEPARATORS)
    return REDACTED if 13 <= len(digits) <= 19 and _luhn(digits) else match.group(0)


class _Shape:
    """The matches of one secret shape in a text, asked for from a position on (:meth:`first_from`): what
    that shape's alternative of the one regex would match, tried at each position from there."""

    __slots__ = ("found", "head", "pattern", "text")

    def __init__(self, pattern: re.Pattern[str], text: str) -> None:
        self.pattern, self.text = pattern, text
        self.found = pattern.finditer(text)
        self.head = self.next()

    def next(self) -> tuple[int, int] | None:
        match = next(self.found, None)
        return None if match is None else match.span()

    def again_from(self, head: tuple[int, int], pos: int) -> tuple[int, int] | None:
        """The first match from ``pos`` on, ``pos`` inside ``head`` (a match another shape's match took)."""
        self.found = self.pattern.finditer(self.text, pos)
        return self.next()

    def first_from(self, pos: int) -> tuple[int, int] | None:
        head = self.head
        while head is not None and head[0] < pos:
            # A match the search went past: the next one is found after it, or from pos if pos is inside it.
            head = self.again_from(head, pos) if head[1] > pos else self.next()
        self.head = head
        return head


class _Jwts(_Shape):
    """JWTs: a match of :data:`_JWT` without its dotted parts is a run where none starts (skipped)."""

    __slots__ = ("run_end",)

    def __init__(self, pattern: re.Pattern[str], text: str) -> None:
        self.run_end = 0  # where the head's first part ends
        super().__init__(pattern, text)

    def next(self) -> tuple[int, int] | None:
        for match in self.found:
            if match.group(1) is not None:
                self.run_end = match.start(1)
                return match.span()
        return None

    def again_from(self, head: tuple[int, int], pos: int) -> tuple[int, int] | None:
        # A later ``eyJ`` of the head's first part, 10 characters or more before its end, ends where it does.
        later = _JWT_START.search(self.text, pos, self.run_end - 10)
        if later is not None:
            return later.start(), head[1]
        return super().again_from(head, pos)


_JWT_START = re.compile(r"eyJ(?<!\weyJ)")


class _Emails(_Shape):
    """E-mail addresses, found from their ``@``: an address starts where the run of characters an address's
    first part may hold, before its ``@``, starts (an address whose run starts before the search's position
    is left out by :meth:`first_from`, as a run's first character is the only place one starts)."""

    __slots__ = ("addresses",)

    def __init__(self, pattern: re.Pattern[str], text: str) -> None:
        self.addresses = self.spans(pattern, text)
        super().__init__(pattern, text)

    @staticmethod
    def spans(pattern: re.Pattern[str], text: str) -> Iterator[tuple[int, int]]:
        backwards = text[::-1]
        length = len(text)
        for match in pattern.finditer(text):
            at = match.start()
            run = _EMAIL_LOCAL_RUN.match(backwards, length - at)  # from the character before the @, backwards
            yield at - (run.end() - length + at) if run else at, match.end()

    def next(self) -> tuple[int, int] | None:
        return next(self.addresses, None)

    def again_from(self, head: tuple[int, int], pos: int) -> tuple[int, int] | None:
        # No address starts inside another's span after its start: its only @ is the one before pos.
        return self.next()


def _redact_tokens(text: str) -> str:
    """``text`` with its bearer tokens, API keys, JWTs and e-mail addresses replaced: left to right, at one
    start the first shape listed, the search going on after each (as one regex of them all did)."""
    shapes: list[_Shape] = [_Shape(pattern, text) for literal, pattern in _TOKENS if literal in text]
    if "eyJ" in text:
        shapes.append(_Jwts(_JWT, text))
    if "@" in text:
        shapes.append(_Emails(_EMAIL_AT, text))
    spans: list[tuple[int, int]] = []
    pos = 0
    while shapes:
        best: tuple[int, int] | None = None
        for shape in list(shapes):
            head = shape.first_from(pos)
            if head is None:
                shapes.remove(shape)  # none after pos: none after any later position either
            elif best is None or head[0] < best[0]:  # a tie goes to the shape listed first
                best = head
        if best is None:
            break
        if len(shapes) == 1 and type(shapes[0]) is _Shape:
            # Only one shape is left: its own search finds the rest (in C). Its pattern checks the boundary
            # before its literal, which the cut leaves out, only from a match's start: best is one already.
            return _replaced(text[: best[0]], spans) + shapes[0].pattern.sub(REDACTED, text[best[0] :])
        spans.append(best)
        pos = best[1]
        if len(shapes) == 1 and type(shapes[0]) is _Emails:  # only addresses are left: taken in turn
            for start, end in shapes[0].addresses:
                if start >= pos:
                    spans.append((start, end))
                    pos = end
            break
    return _replaced(text, spans)


def _assignment_starts(text: str) -> list[int]:
    """Where a ``password=…``-like assignment may start: before each ``=`` or ``:``, the name (and spaces)
    before it, found on the reversed text, left to right."""
    backwards = text[::-1]
    return [len(text) - match.end() for match in _ASSIGNMENT_BACKWARDS.finditer(backwards)][::-1]


def _replaced(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each span (left to right, none overlapping) replaced by :data:`REDACTED`."""
    if not spans:
        return text
    pieces: list[str] = []
    last = 0
    for start, end in spans:
        pieces.append(text[last:start])
        pieces.append(REDACTED)
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def redact_text(text: str) -> str:
    """``text`` with tokens, keys, ``password=…`` values, e-mail addresses and card numbers replaced.

    A text up to :data:`ONE_PASS_CHARS` long goes through the patterns as they are written, one C call each;
    a longer one through searches that find the same matches in time linear in the text (each shape from
    its literal start, no run scanned twice for one shape: :func:`_redact_tokens`, :func:`_assignment_starts`,
    :data:`_CARD_FROM_DIGIT`)."""
    short = len(text) <= ONE_PASS_CHARS
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
        text = _PATTERNS.sub(REDACTED, text) if short else _redact_tokens(text)
    if "=" in text or ":" in text:
        if short:
            text = _SECRET_ASSIGNMENT.sub(lambda match: match.group(1) + REDACTED, text)
        else:
            values: list[tuple[int, int]] = []
            pos = 0
            for start in _assignment_starts(text):
                match = _SECRET_ASSIGNMENT.match(text, start) if start >= pos else None
                if match is not None:
                    values.append((match.end(1), match.end()))  # the name and its ``=`` are kept
                    pos = match.end()
            text = _replaced(text, values)
    if short:
        return _CARD.sub(_card, text)
    return (_CARD_FROM_DIGIT_ASCII if text.isascii() else _CARD_FROM_DIGIT).sub(_card, text)


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
