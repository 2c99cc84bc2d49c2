"""The reserved token ids: BERT's [MASK] and the sentinels of T5's span corruption.

Every source uses one fixed layout. Ids 0 and 1 are the tokenizer's `<unk>` and EOS; then

    [MASK]          id 2
    <extra_id_i>    id 3 + i, for i < data.sentinels

A trained tokenizer holds these as sentencepiece control pieces: encoding text never yields
them (the text "[MASK]" is spelled with ordinary pieces) and decoding drops them unless asked
to name them, so `decode(encode(text)) == text` still holds. The synthetic source, which has
no tokenizer, leaves the ids its objective writes out of its language. Which of them an
objective writes, and the checks that the source has them, are `special_ids` in
data/objectives.py.
"""

from __future__ import annotations

import dataclasses

MASK_PIECE = "[MASK]"
MASK_ID = 2
FIRST_SENTINEL_ID = 3
DEFAULT_SENTINELS = 0  # span-corruption configs set their own: one per noise span (26 for 512 tokens; T5 uses 100)


def sentinel_piece(index: int) -> str:
    """The name of sentinel `index`, as T5 spells it."""
    return f"<extra_id_{index}>"


def reserved_pieces(sentinels: int) -> list[str]:
    """The reserved pieces in id order: [MASK], then the sentinels."""
    return [MASK_PIECE, *(sentinel_piece(i) for i in range(sentinels))]


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The [MASK] id and the id of each sentinel (sentinel i is `sentinels[i]`)."""

    mask: int
    sentinels: tuple[int, ...]

    @property
    def reserved(self) -> tuple[int, ...]:
        """Every reserved id."""
        return (self.mask, *self.sentinels)

    def describe(self) -> str:
        """The pieces and their ids, e.g. `[MASK] 2, <extra_id_0>..<extra_id_99> 3..102`."""
        text = f"{MASK_PIECE} {self.mask}"
        if self.sentinels:
            names = f"{sentinel_piece(0)}..{sentinel_piece(len(self.sentinels) - 1)}"
            text += f", {names} {self.sentinels[0]}..{self.sentinels[-1]}"
        return text


def layout(sentinels: int) -> SpecialIds:
    """The fixed ids of [MASK] and of `sentinels` sentinels."""
    return SpecialIds(MASK_ID, tuple(range(FIRST_SENTINEL_ID, FIRST_SENTINEL_ID + sentinels)))
