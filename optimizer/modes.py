"""What a rack does over the horizon, as reported: the summary of its lifecycle (optimizer.lifecycles)."""

from __future__ import annotations

import enum


class Mode(enum.StrEnum):
    MINE = "mine"  # mines at its own site
    AI = "ai"  # its slot is converted to AI/HPC capacity (it may mine until the conversion starts)
    IDLE = "idle"  # kept in place, switched off
    SELL = "sell"  # sold (at the plan's start, or at a recourse date after mining until then)
    MOVE = "move"  # moved to another site (at the plan's start, or at a recourse date)


MODES = tuple(Mode)


def mode_of_lifecycle(key: str) -> Mode:
    """The reporting mode of a lifecycle key (optimizer.lifecycles): "ai@0:sell" -> AI, "move:b" -> MOVE,
    "sell@m6" -> SELL, "idle:restart@m6" -> MINE (what the rack ends up doing)."""
    if key.startswith("ai@"):
        return Mode.AI
    if ":restart@" in key:
        return Mode.MINE
    return Mode(key.split("@")[0].split(":")[0])
