"""Rack ids as ranges: a plan names which racks take which mode without listing every id.

A group's racks are numbered in id order, "<group>-00000", "<group>-00001", ... (RACK_ID_DIGITS
digits, more once a group passes 10^5 racks), and each mode takes the next contiguous block of them
(optimizer.allocation.rack_ranges). A block travels as one RackRange (prefix, first, count, digits),
so plan.json and the gRPC Plan stay a few KB for a group of a million racks; `expand` lists the ids
when a caller needs them.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, Field

RACK_ID_DIGITS = 5  # rack numbers are zero-padded to this width: "<group>-00042"
RACK_ID_SEPARATOR = "-"


class RackRange(BaseModel):
    """Ids prefix + first, ..., prefix + (first + count - 1), each number zero-padded to `digits` digits."""

    prefix: str
    first: int = Field(ge=0)
    count: int = Field(ge=0)
    digits: int = Field(default=RACK_ID_DIGITS, ge=0)

    def rack_id(self, number: int) -> str:
        return f"{self.prefix}{number:0{self.digits}d}"

    def ids(self) -> list[str]:
        return [self.rack_id(k) for k in range(self.first, self.first + self.count)]

    def label(self) -> str:
        """The block in words: g-00000..g-00099 (one id alone when count is 1, "" when empty)."""
        if self.count == 0:
            return ""
        last = self.rack_id(self.first + self.count - 1)
        return last if self.count == 1 else f"{self.rack_id(self.first)}..{last}"


def group_range(group_id: str, first: int, count: int) -> RackRange:
    """Racks first .. first + count - 1 of a group, by the group's id scheme."""
    return RackRange(prefix=f"{group_id}{RACK_ID_SEPARATOR}", first=first, count=count)


def expand(ranges: Iterable[RackRange]) -> list[str]:
    """Every id of the ranges, in order."""
    return [rack_id for block in ranges for rack_id in block.ids()]


def label(ranges: Iterable[RackRange]) -> str:
    """The ranges in words, "g-00000..g-00099, g-00200..g-00249"; "" when there are none."""
    return ", ".join(text for text in (block.label() for block in ranges) if text)


def split(ranges: Iterable[RackRange], count: int) -> tuple[list[RackRange], list[RackRange]]:
    """The first `count` ids of the ranges, and the rest, still as ranges (a partial run's two parts)."""
    head: list[RackRange] = []
    tail: list[RackRange] = []
    for block in ranges:
        take = max(0, min(block.count, count))
        count -= take
        if take:
            head.append(block.model_copy(update={"count": take}))
        if take < block.count:
            tail.append(block.model_copy(update={"first": block.first + take, "count": block.count - take}))
    return head, tail
