"""Rack ids as ranges: the blocks list exactly the ids a group's racks had when every id was listed."""

import pytest
from pydantic import ValidationError

from optimizer.allocation import Allocation, Mode, rack_ranges
from optimizer.fleet import RackGroup
from optimizer.modes import MODES
from optimizer.rack_ranges import RackRange, expand, group_range, label, split


def test_a_range_lists_its_ids_zero_padded():
    block = RackRange(prefix="texas-", first=98, count=3, digits=5)
    assert block.ids() == ["texas-00098", "texas-00099", "texas-00100"]
    assert block.label() == "texas-00098..texas-00100"
    assert RackRange(prefix="g-", first=7, count=1).label() == "g-00007"
    assert RackRange(prefix="g-", first=7, count=0).ids() == []


def test_numbers_past_the_padding_are_written_in_full():
    assert group_range("big", 99_999, 2).ids() == ["big-99999", "big-100000"]


def test_expand_and_label_concatenate_blocks_in_order():
    blocks = [group_range("g", 0, 2), group_range("g", 5, 1)]
    assert expand(blocks) == ["g-00000", "g-00001", "g-00005"]
    assert label(blocks) == "g-00000..g-00001, g-00005"
    assert label([]) == ""


def test_negative_counts_are_refused():
    with pytest.raises(ValidationError):
        RackRange(prefix="g-", first=0, count=-1)


def test_modes_take_consecutive_blocks_that_cover_the_group_once():
    group = RackGroup(id="site-a", site="a", machine="m", racks=10, machines_per_rack=1, opex_usd_per_rack_day=1)
    allocation = Allocation(racks={"site-a": {Mode.MINE: 4, Mode.AI: 0, Mode.IDLE: 6}})
    ranges = rack_ranges(group, allocation)
    assert ranges[Mode.MINE] == [group_range("site-a", 0, 4)] and ranges[Mode.AI] == []
    assert ranges[Mode.IDLE] == [group_range("site-a", 4, 6)]
    # the ids the plan listed before ranges: "<group>-<k:05d>" for k in id order, mode after mode
    assert [i for m in MODES for i in expand(ranges[m])] == [f"site-a-{k:05d}" for k in range(10)]


@pytest.mark.parametrize("count", [0, 1, 3, 4, 5, 9, 12, 50])
def test_split_takes_the_first_ids_in_order_and_leaves_the_rest(count):
    blocks = [group_range("g", 0, 4), group_range("g", 10, 5), group_range("h", 7, 3)]
    head, tail = split(blocks, count)
    assert expand(head) == expand(blocks)[:count]
    assert expand(tail) == expand(blocks)[count:]
    assert all(block.count > 0 for block in head + tail)
