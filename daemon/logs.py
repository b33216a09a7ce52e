"""Logging to stderr for the journal: plain lines, or JSON for log shippers.

State transitions are logged by the store with the same fields every time
(entity, id, from, to, actor, why, push); the JSON format carries them as
keys. Nothing here ever formats a token or password: the code that holds
secrets never passes them to a logger.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

_FIELDS = ("entity", "entity_id", "from_state", "to_state", "actor", "why", "push", "host")


# control characters that a record's data may carry (a title with a newline), escaped in
# the text format so that one record stays one line and API input cannot forge log lines
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F) if c != 0x09}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r"})


class TextFormatter(logging.Formatter):
    """`LEVEL logger: message` on one line: control characters in it are escaped (a
    traceback, when there is one, still follows on its own lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_ESCAPES)


class ClientErrors(logging.Filter):
    """aiohttp logs every request it cannot parse (a 4xx it answers itself: a URL or a
    header over 8 KiB, a bad character) as an ERROR with a traceback. That is the
    client's mistake, and any client could fill the journal with them: one DEBUG line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        code = getattr(exc, "code", None)
        if isinstance(code, int) and 400 <= code < 500:
            detail = str(getattr(exc, "message", "") or "")[:200]
            record.msg, record.args = f"{record.getMessage()}: {code} {detail}", ()
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info, record.exc_text = None, None
        return record.levelno >= logging.getLogger().getEffectiveLevel()


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the transition fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            if name in record.__dict__:
                out[name] = record.__dict__[name]
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(log_format: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # systemd's journal adds its own time stamp; the level and logger are enough
        handler.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncssh logs every channel at INFO; its failures reach us as outcomes
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrors) for f in server.filters):
        server.addFilter(ClientErrors())
