import random

from qasr.engine.block_tables import BlockTables
from qasr.scheduler import AudioSpan, SamplingParams, Sequence
from qasr.scheduler.block_manager import BlockManager


def make_seq(k: int) -> Sequence:
    return Sequence([7] * 6, AudioSpan(1, 3, bytes([k])), SamplingParams(), frozenset({0}))


def test_rows_follow_the_block_manager_through_growth_preemption_and_reuse():
    """Random allocations, preemptions (the blocks taken away and given again) and finished sequences: every
    live sequence's row always reads its block list, then zeros, while the array grows in rows and width; rows_of
    and row agree."""
    rng = random.Random(0)
    manager = BlockManager(num_blocks=400, block_size=4, enable_prefix_caching=False)
    tables = BlockTables(num_rows=2, width=2)
    live: list[Sequence] = []
    for step in range(400):
        action = rng.random()
        if action < 0.25 or not live:
            seq = make_seq(step % 256)
            assert manager.allocate(seq, rng.randint(1, 9))
            live.append(seq)
        elif action < 0.75:
            seq = rng.choice(live)
            if manager.allocate(seq, rng.randint(1, 12)):
                seq.num_computed_tokens = len(seq.block_ids) * manager.block_size
        elif action < 0.85:  # preempted: freed, then given blocks anew (a new list, perhaps as long as the old)
            seq = rng.choice(live)
            before = len(seq.block_ids)
            manager.free(seq)
            seq.num_computed_tokens = 0
            assert manager.allocate(seq, before * manager.block_size)
        else:
            seq = live.pop(rng.randrange(len(live)))
            manager.free(seq)
            tables.release(seq.seq_id)
        # a step of every live sequence, through the runner's decode path (rows_of) or one at a time
        rows = tables.rows_of(live) if step % 2 else [tables.row(s) for s in live]
        width = max((len(s.block_ids) for s in live), default=0) + 1
        for seq, row in zip(live, tables.rows(rows, width)):
            n = len(seq.block_ids)
            assert row[:n].tolist() == seq.block_ids
            assert not row[n:].any()
    assert tables.table.shape[0] >= len(live) and tables.table.shape[1] > 2  # it grew both ways


def test_a_released_row_is_reused_and_written_afresh():
    manager = BlockManager(num_blocks=64, block_size=4, enable_prefix_caching=False)
    tables = BlockTables(num_rows=1, width=8)
    first = make_seq(1)
    manager.allocate(first, 20)
    row = tables.row(first)
    manager.free(first)
    tables.release(first.seq_id)
    second = make_seq(2)
    manager.allocate(second, 4)
    assert tables.row(second) == row  # the one row, taken again
    assert tables.rows([row], 8)[0].tolist() == second.block_ids + [0] * 7
    copied = tables.rows([row], 8)
    copied[0, 0] = 999  # the step's copy, not the kept row
    assert tables.rows([row], 8)[0, 0] == second.block_ids[0]
