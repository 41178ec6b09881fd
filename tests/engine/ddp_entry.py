"""Entry point for the multi-process tests: ``torchrun ... tests/engine/ddp_entry.py run CONFIG ...``.

It runs the real ``rankwise`` CLI in each process, with test-only hooks chosen by environment:

* ``RANKWISE_TEST_PER_EXAMPLE_LOSS=1``: the toy backbone's loss becomes the per-example mean
  cross-entropy (its class->input contrastive term couples the examples of a batch, so a sharded
  batch would be a different objective; a per-example mean is what data parallelism reproduces).
* ``RANKWISE_TEST_AUDIT=DIR``: every rank except 0 records each file-system write it makes under
  ``DIR`` (via ``sys.addaudithook``: opens for writing, mkdir, rename, remove, rmtree) in
  ``DIR/audit.rank<r>.jsonl``, one ``[event, path]`` line appended the moment it happens. The file
  is created before the rank does anything else, so it exists and is complete however the rank
  ends: when rank 0 is killed, torchrun stops the others with SIGTERM, whose default action skips
  exit handlers (an audit written at exit was there or not depending on which came first).
* ``RANKWISE_TEST_KILL_AT=N``: rank 0 dies (``os._exit``, no cleanup) at its N-th call of
  ``checkpoint.write_state``, i.e. with a snapshot written but not yet committed.
"""

from __future__ import annotations

import json
import os
import sys


def _per_example_loss() -> None:
    import torch.nn.functional as F

    from rankwise.backbones.toy import ToyBackbone

    def loss(self, batch, task):
        logits = self.model(batch["tokens"], batch["class_tokens"]).float()
        return F.cross_entropy(logits, batch["labels"])

    ToyBackbone.loss = loss


def _audit(root: str, rank: int) -> None:
    root = os.path.realpath(root)
    # opened before the hook exists, so it is not itself recorded; os.write raises no audit event
    log = os.open(os.path.join(root, f"audit.rank{rank}.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def under(path) -> str | None:
        if isinstance(path, int) or path is None:
            return None
        full = os.path.realpath(os.fsdecode(path))
        return full if full.startswith(root) else None

    def record(event: str, path: str) -> None:
        os.write(log, (json.dumps([event, path]) + "\n").encode())  # one write() per event: whole lines

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & write_flags
            )
            if writing and (p := under(path)):
                record(event, p)
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.rename", "shutil.rmtree", "os.truncate"):
            if args and (p := under(args[0])):
                record(event, p)

    sys.addaudithook(hook)


def _kill_at(n: int) -> None:
    from rankwise.engine import checkpoint as ckpt

    original, calls = ckpt.write_state, [0]

    def write_state(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            os._exit(9)
        return original(*args, **kwargs)

    ckpt.write_state = write_state


def main() -> int:
    rank = int(os.environ.get("RANK", "0"))
    if os.environ.get("RANKWISE_TEST_PER_EXAMPLE_LOSS") == "1":
        _per_example_loss()
    if os.environ.get("RANKWISE_TEST_AUDIT") and rank != 0:
        _audit(os.environ["RANKWISE_TEST_AUDIT"], rank)
    if os.environ.get("RANKWISE_TEST_KILL_AT") and rank == 0:
        _kill_at(int(os.environ["RANKWISE_TEST_KILL_AT"]))
    from rankwise import cli

    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
