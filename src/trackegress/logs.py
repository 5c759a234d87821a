"""Log lines: plain text or one JSON object per line, every line of an egress tagged with its id, secrets out."""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import sys

# Set by ``Egress.run``: every task it starts (subscriber, transport, sinks) inherits it, so their lines carry it too.
current_egress_id: contextvars.ContextVar[str] = contextvars.ContextVar("egress_id", default="")


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


class _Redact(logging.Filter):
    """Replaces the given secrets in every message."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self._secrets):
            for secret in self._secrets:
                message = message.replace(secret, "{secret}")
            record.msg, record.args = message, ()
        return True


def setup_logging(level: str, *, json_lines: bool = False, secrets: tuple[str, ...] = ()) -> None:
    """Log to stderr at ``level``; text lines end with the egress id in brackets when there is one."""
    handler = logging.StreamHandler(sys.stderr)
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s%(egress_tag)s")
    handler.setFormatter(_JsonLines() if json_lines else text)
    handler.addFilter(_EgressId())
    handler.addFilter(_Redact(secrets))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
