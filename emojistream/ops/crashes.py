"""supervisord's event listener that counts each component's crashes (exits it did not ask
for), for scripts/status.sh: ``python -m emojistream.ops.crashes FILE`` keeps the counts, by
program name, as JSON in FILE (supervisord restarts every crashed component)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def read_counts(path: Path) -> dict[str, int]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, counts: dict[str, int]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(counts))
    os.replace(temporary, path)


def main(argv=None) -> int:
    """supervisord's listener protocol: READY, a header line, a payload, RESULT."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    path = Path((argv or sys.argv[1:])[0])
    counts = read_counts(path)
    stdin, stdout = sys.stdin, sys.stdout
    while True:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return 0
        header = dict(token.split(":", 1) for token in line.split())
        payload = stdin.read(int(header["len"]))
        fields = dict(token.split(":", 1) for token in payload.split("\n", 1)[0].split())
        if header.get("eventname") == "PROCESS_STATE_EXITED" and fields.get("expected") == "0":
            name = fields["processname"]
            counts[name] = counts.get(name, 0) + 1
            _write(path, counts)
            print(f"{name} exited unexpectedly ({counts[name]} so far)", file=sys.stderr,
                  flush=True)
        stdout.write("RESULT 2\nOK")
        stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
