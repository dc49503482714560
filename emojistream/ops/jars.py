"""The jars scripts/setup.sh places in lib/, pinned by their SHA-256 in jvm/jars.sha256.

Maven checks each download against the repository's own checksum (setup runs it with
--strict-checksums, so a mismatch fails instead of warning); the pins add what Maven cannot: the
very bytes this project was tested with. Setup verifies every folder it fetched, every run:

    python -m emojistream.ops.jars verify kafka spark-kafka jmx-exporter
    python -m emojistream.ops.jars pin kafka spark-kafka jmx-exporter   # after a version change

A jar whose hash differs, a pinned jar that is missing and a jar that is not pinned all fail,
each named. The pins file has sha256sum's format ("HASH  lib/FOLDER/NAME.jar"). Standard library
only: setup runs it before anything else is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PINS = Path("jvm") / "jars.sha256"


class JarMismatch(RuntimeError):
    """lib/ does not hold exactly the pinned jars."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_pins(pins: Path) -> dict[str, str]:
    """Relative path -> its pinned hash."""
    found = {}
    for number, line in enumerate(pins.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise JarMismatch(f"{pins}:{number}: not a line of sha256sum: {line!r}")
        found[name] = digest
    return found


def _jars(root: Path, folders: list[str]) -> dict[str, Path]:
    return {str(path.relative_to(root)): path for folder in folders
            for path in sorted((root / "lib" / folder).glob("*.jar"))}


def verify(root: Path, pins: Path, folders: list[str]) -> int:
    """Check lib/FOLDER/*.jar of each folder against the pins; the number of jars checked.
    Raises JarMismatch naming every difference."""
    pinned = {name: digest for name, digest in read_pins(pins).items()
              if name.split("/")[1] in folders}
    present = _jars(root, folders)
    problems = [f"{name}: missing (pinned in {pins})" for name in sorted(pinned)
                if name not in present]
    problems += [f"{name}: not pinned in {pins}" for name in sorted(present)
                 if name not in pinned]
    problems += [f"{name}: SHA-256 {actual} differs from the pinned {pinned[name]}"
                 for name, path in present.items()
                 if name in pinned and (actual := sha256(path)) != pinned[name]]
    if problems:
        raise JarMismatch("the jars in lib/ are not the pinned ones:\n  " + "\n  ".join(problems))
    return len(present)


def pin(root: Path, pins: Path, folders: list[str]) -> None:
    """Write the pins of lib/FOLDER/*.jar (the folders of ``folders``; others' pins are kept)."""
    kept = {name: digest for name, digest in (read_pins(pins) if pins.exists() else {}).items()
            if name.split("/")[1] not in folders}
    kept.update({name: sha256(path) for name, path in _jars(root, folders).items()})
    pins.write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(kept.items())))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emojistream.ops.jars",
                                     description="Verify (or pin) the SHA-256 of lib/'s jars.")
    parser.add_argument("action", choices=("verify", "pin"))
    parser.add_argument("folders", nargs="+", help="folders of lib/: kafka, spark-kafka, ...")
    parser.add_argument("--root", type=Path, default=REPO_ROOT,
                        help="the checkout whose lib/ is checked (default: this one)")
    parser.add_argument("--pins", type=Path, help=f"the pins (default: ROOT/{PINS})")
    args = parser.parse_args(argv)
    pins = args.pins or args.root / PINS
    try:
        if args.action == "pin":
            pin(args.root, pins, args.folders)
            return 0
        count = verify(args.root, pins, args.folders)
    except (JarMismatch, OSError) as err:
        print(f"jars: {err}", file=sys.stderr)
        return 1
    print(f"jars: the {count} jars of lib/{{{','.join(args.folders)}}} match {pins}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
