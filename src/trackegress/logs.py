"""Log lines: plain text or one JSON object per line, every line of an egress tagged with its id, secrets out."""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import sys

# Set by ``Egress.run``: every task it starts (subscriber, transport, sinks) inherits it, so their lines carry it too.
# Work shared by all egresses (store writer, webhook queues, the media core's I/O callbacks) runs in ``context_of``
# its own egress or of none: a task or callback keeps the context it was created in, not the one of its caller.
current_egress_id: contextvars.ContextVar[str] = contextvars.ContextVar("egress_id", default="")

# Tokens minted per egress and per join are not known at start-up: JWTs and token query values, wherever they occur
# (the websockets client logs the /rtc URL with its access_token at debug level).
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_TOKEN_PARAM = re.compile(r"(?i)((?:access_)?token=)[^&\s\"']+")


def context_of(egress_id: str) -> contextvars.Context:
    """A copy of the current context whose lines carry ``egress_id`` (none when empty): for tasks and callbacks
    that outlive or serve others than the code that creates them (``create_task(..., context=...)``)."""
    context = contextvars.copy_context()
    context.run(current_egress_id.set, egress_id)
    return context


def redact_tokens(text: str) -> str:
    """``text`` with JWTs and ``token=`` / ``access_token=`` values replaced."""
    return _TOKEN_PARAM.sub(r"\1{...}", _JWT.sub("{token}", text))


class _EgressId(logging.Filter):
    """Gives every record an ``egress_id`` attribute: its own extra, else the running egress's, else ''."""

    def filter(self, record: logging.LogRecord) -> bool:
        egress_id = getattr(record, "egress_id", "") or current_egress_id.get()
        record.egress_id = egress_id
        record.egress_tag = f" [{egress_id}]" if egress_id else ""
        return True


class _JsonLines(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, egress_id (when there is one), error."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        egress_id = getattr(record, "egress_id", "")
        if egress_id:
            entry["egress_id"] = egress_id
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _Redacting(logging.Formatter):
    """Formats with ``inner``, then replaces the given secrets and any token in the whole line (tracebacks too)."""

    def __init__(self, inner: logging.Formatter, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self._inner = inner
        # as they appear in a text line and inside a JSON string
        self._secrets = sorted({form for s in secrets if s for form in (s, json.dumps(s)[1:-1])}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        line = self._inner.format(record)
        for secret in self._secrets:
            line = line.replace(secret, "{secret}")
        return redact_tokens(line)


def setup_logging(level: str, *, json_lines: bool = False, secrets: tuple[str, ...] = ()) -> None:
    """Log to stderr at ``level``; text lines end with the egress id in brackets when there is one."""
    handler = logging.StreamHandler(sys.stderr)
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s%(egress_tag)s")
    handler.setFormatter(_Redacting(_JsonLines() if json_lines else text, secrets))
    handler.addFilter(_EgressId())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)  # Python warnings become lines of their own (tagged, redacted), not stray stderr
