"""Structured logs: one JSON object per line (or readable text), with the node's name.

Events from `NodeCore` become log records whose `fields` are merged into the line, so a
benchmark or a researcher can parse what happened without regexes. libp2p's own logger is
routed here at WARNING, so its tracebacks do not spray raw stderr.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

LOGGER_NAME = "gpumesh"


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "node": self.node,
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = getattr(record, "fields", None) or {}
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        text = (
            f"{stamp}.{int(record.msecs):03d} {record.levelname[:4]} {self.node} "
            f"{record.getMessage()} {extra}"
        ).rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(
    node: str, *, level: str = "info", fmt: str = "json", file: Path | None = None
) -> logging.Logger:
    """Send gpumesh's and libp2p's logs to one handler; returns the gpumesh logger."""
    handler: logging.Handler = (
        logging.FileHandler(file, encoding="utf-8") if file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(JsonFormatter(node) if fmt == "json" else TextFormatter(node))
    ours = logging.getLogger(LOGGER_NAME)
    ours.handlers[:] = [handler]
    ours.setLevel(level.upper())
    ours.propagate = False
    libp2p = logging.getLogger("libp2p")
    libp2p.handlers[:] = [handler]
    libp2p.setLevel(logging.WARNING)
    libp2p.propagate = False
    return ours


def log_event(
    logger: logging.Logger,
    name: str,
    fields: dict[str, Any] | None = None,
    level: int = logging.INFO,
) -> None:
    logger.log(level, name, extra={"fields": fields or {}})
