"""The pinned jars (emojistream/ops/jars.py, jvm/jars.sha256): setup's check of lib/, on the real
lib/ and on a copy of it in a temporary folder that the test then tampers with."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from emojistream.ops import jars
from tests.services import REPO_ROOT

PINS = REPO_ROOT / "jvm" / "jars.sha256"
FOLDERS = ["spark-kafka", "jmx-exporter"]  # small ones: the copy takes a blink


def test_setup_fetches_with_strict_checksums_and_verifies_the_pins():
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    assert "mvn --batch-mode --quiet --strict-checksums " in setup
    assert "\n  verify_jars\n" in setup


def test_the_jars_setup_placed_are_the_pinned_ones():
    pinned = jars.read_pins(PINS)
    folders = sorted({name.split("/")[1] for name in pinned})
    assert folders == ["jmx-exporter", "kafka", "log4j", "spark-kafka"]
    present = [f for f in folders if (REPO_ROOT / "lib" / f).is_dir()]
    assert jars.verify(REPO_ROOT, PINS, present) == sum(
        1 for name in pinned if name.split("/")[1] in present)


@pytest.fixture
def copy(tmp_path):
    for folder in FOLDERS:
        shutil.copytree(REPO_ROOT / "lib" / folder, tmp_path / "lib" / folder)
    return tmp_path


def verify_cli(root) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emojistream.ops.jars", "verify", *FOLDERS,
                           "--root", str(root), "--pins", str(PINS)],
                          capture_output=True, text=True, timeout=60)


def test_a_tampered_missing_or_unpinned_jar_fails_naming_each(copy):
    clean = verify_cli(copy)
    assert clean.returncode == 0, clean.stderr
    jar = copy / "lib" / "jmx-exporter" / "jmx_prometheus_javaagent-1.0.1.jar"
    pinned = jars.read_pins(PINS)["lib/jmx-exporter/jmx_prometheus_javaagent-1.0.1.jar"]
    data = bytearray(jar.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    jar.write_bytes(bytes(data))
    (copy / "lib" / "spark-kafka" / "kafka-clients-3.9.2.jar").unlink()
    (copy / "lib" / "spark-kafka" / "extra-1.0.jar").write_bytes(b"PK\x03\x04")
    tampered = verify_cli(copy)
    assert tampered.returncode == 1
    assert tampered.stdout == ""
    assert tampered.stderr == (
        "jars: the jars in lib/ are not the pinned ones:\n"
        f"  lib/spark-kafka/kafka-clients-3.9.2.jar: missing (pinned in {PINS})\n"
        f"  lib/spark-kafka/extra-1.0.jar: not pinned in {PINS}\n"
        f"  lib/jmx-exporter/jmx_prometheus_javaagent-1.0.1.jar: SHA-256 {jars.sha256(jar)} "
        f"differs from the pinned {pinned}\n")
