"""Reading a checkpoint that a user names on the command line (``--checkpoint FILE``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from l2_session.tools.errors import UsageError

if TYPE_CHECKING:
    from l2_session.infrastructure.ledger import Checkpoint

# A checkpoint is a few hundred bytes; reading no more than this keeps a wrong file (a disk
# image passed by mistake) from filling memory.
CHECKPOINT_MAX_BYTES = 64 * 1024


def read_checkpoint(path: str) -> Checkpoint:
    """The checkpoint in the file at ``path``; UsageError says what is wrong with the file."""
    from l2_session.infrastructure.ledger import Checkpoint, CheckpointError

    try:
        with open(path, "rb") as f:
            data = f.read(CHECKPOINT_MAX_BYTES + 1)
    except OSError as e:
        raise UsageError(f"--checkpoint {path}: cannot read it ({e.strerror})") from e
    if len(data) > CHECKPOINT_MAX_BYTES:
        raise UsageError(
            f"--checkpoint {path} holds over {CHECKPOINT_MAX_BYTES} bytes; a checkpoint is a "
            "few hundred (the file `demo` saves, or SessionLedger.checkpoint().to_text())"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(
            f"--checkpoint {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
            f"{e.start}); a checkpoint is the text `demo` saves, or "
            "SessionLedger.checkpoint().to_text()"
        ) from None
    try:
        return Checkpoint.parse(text)
    except CheckpointError as e:
        raise UsageError(f"--checkpoint {path}: {e}") from e
