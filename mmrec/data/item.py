"""What the shard reader hands the batch builder for one item: the decoded item, and for a training sample
the `Visit` it is (`mmrec.data.reader` makes them, `mmrec.data.batch` consumes them).

Held apart from both, so that the reader and the batch builder import it and not each other, and so that
the model (which takes batches) needs no reader: nothing here imports webdataset, PIL or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types only: a decoded item's media are built by the reader
    import torch
    from PIL import Image


@dataclass
class DecodedItem:
    """One catalogue item as the encoders' preprocessing receives it."""

    index: int  # row of the item in item_ids.json and in exported embeddings
    item_id: str
    text: str | None
    image: Image.Image | None  # RGB
    waveform: torch.Tensor | None  # float32 (channels, frames)
    sample_rate: int | None
    attributes: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def present(self) -> dict[str, bool]:
        return {"text": self.text is not None, "image": self.image is not None, "audio": self.waveform is not None}


@dataclass(frozen=True)
class Visit:
    """Which visit of its item a training sample is: chunk `chunk` of `chunks` of the item's training
    interactions in pass `pass_number` (see `mmrec.data.batch.ExampleBuilder`)."""

    pass_number: int
    chunk: int
    chunks: int


@dataclass
class VisitOf:
    """A decoded item (or `mmrec.data.batch.KeptItem`) with the `Visit` its sample was marked with."""

    item: Any
    visit: Visit
