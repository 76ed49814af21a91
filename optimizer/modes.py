"""What a rack does over the horizon, as reported: the summary of its lifecycle (optimizer.lifecycles)."""

from __future__ import annotations

import enum


class Mode(enum.StrEnum):
    MINE = "mine"  # mines at its own site
    AI = "ai"  # its slot is converted to AI/HPC capacity (it may mine until the conversion starts)
    IDLE = "idle"  # kept in place, switched off
    SELL = "sell"  # sold at the plan's start
    MOVE = "move"  # moved to another site at the plan's start


MODES = tuple(Mode)


def mode_of_lifecycle(key: str) -> Mode:
    """The reporting mode of a lifecycle key (optimizer.lifecycles): "ai@0:sell" -> AI, "move:b" -> MOVE."""
    if key.startswith("ai@"):
        return Mode.AI
    if key.startswith("move:"):
        return Mode.MOVE
    return Mode(key)
