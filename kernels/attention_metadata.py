from dataclasses import dataclass

import torch


@dataclass(slots=True)
class AttentionMetadata:
    """Where this step's tokens sit in the paged KV cache; the same for every attention backend.

    Tokens are packed flat, sequence after sequence. Sequence i owns query rows
    query_start_loc[i]:query_start_loc[i+1]; its keys are its first seq_lens[i] cache slots
    (earlier context plus this step's tokens), found through block_tables[i].
    """

    slot_mapping: torch.Tensor  # [num_tokens] int64 cache slot of each new token; -1 = do not store
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    seq_lens: torch.Tensor  # [num_seqs] int32
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32
    max_query_len: int
    max_seq_len: int
    query_lens_host: list[int]
    seq_lens_host: list[int]

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_host)

    @property
    def is_pure_decode(self) -> bool:
        return self.max_query_len == 1
