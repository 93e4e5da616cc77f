"""The runner's block tables, kept between steps: a row of one host array per sequence while it lives, written only
where its sequence got new blocks, so that a step copies out its sequences' rows instead of rebuilding every table
from the scheduler's lists (vLLM V1's persistent input batch, for block tables)."""

import numpy as np

from qasr.scheduler import Sequence


class BlockTables:

    def __init__(self, num_rows: int = 64, width: int = 64):
        self.table = np.zeros((num_rows, width), dtype=np.int32)
        self.row_of_seq: dict[int, int] = {}
        self.free_rows = list(range(num_rows - 1, -1, -1))  # popped from the end: row 0 first
        # the block list each row copies and how much of it is in the row. The block manager gives a sequence a
        # new list whenever it takes its blocks away (a preemption), so an old list means a row to write afresh
        self.copied: list[list[int] | None] = [None] * num_rows
        self.num_copied = [0] * num_rows

    def row(self, seq: Sequence) -> int:
        """The row holding `seq`'s block table as it is now."""
        row = self.row_of_seq.get(seq.seq_id)
        if row is None:
            row = self.row_of_seq[seq.seq_id] = self._take_row()
        block_ids = self.copied[row]
        if block_ids is not seq.block_ids:
            block_ids = self.copied[row] = seq.block_ids
            self.table[row] = 0
            self.num_copied[row] = 0
        done, num_blocks = self.num_copied[row], len(block_ids)
        if num_blocks > done:
            if num_blocks > self.table.shape[1]:
                self._grow(self.table.shape[0], max(num_blocks, 2 * self.table.shape[1]))
            self.table[row, done:num_blocks] = block_ids[done:]
            self.num_copied[row] = num_blocks
        return row

    def rows_of(self, seqs: list[Sequence]) -> list[int]:
        """`row` of each sequence; a sequence whose row is up to date costs a lookup and two comparisons."""
        row_of_seq, copied, num_copied, row = self.row_of_seq, self.copied, self.num_copied, self.row
        rows = []
        for seq in seqs:
            current = row_of_seq.get(seq.seq_id)
            if current is None or copied[current] is not seq.block_ids or num_copied[current] != len(seq.block_ids):
                current = row(seq)
            rows.append(current)
        return rows

    def rows(self, rows: list[int], width: int) -> np.ndarray:
        """The tables of `rows`, `width` blocks each (zeros past a sequence's last block), as a new array."""
        return self.table[np.asarray(rows, dtype=np.intp), :width]

    def release(self, seq_id: int) -> None:
        row = self.row_of_seq.pop(seq_id, None)
        if row is not None:
            self.copied[row] = None
            self.free_rows.append(row)

    def _take_row(self) -> int:
        if not self.free_rows:
            num_rows = self.table.shape[0]
            self._grow(2 * num_rows, self.table.shape[1])
            self.free_rows = list(range(2 * num_rows - 1, num_rows - 1, -1))
        return self.free_rows.pop()

    def _grow(self, num_rows: int, width: int) -> None:
        old = self.table
        self.table = np.zeros((num_rows, width), dtype=np.int32)
        self.table[:old.shape[0], :old.shape[1]] = old
        self.copied += [None] * (num_rows - old.shape[0])
        self.num_copied += [0] * (num_rows - old.shape[0])
