#!/usr/bin/env bash
# Set up everything the project needs, idempotently (a second run takes seconds):
#   - .venv/ with the Python packages of requirements.lock (pinned, with hashes) and the
#     project itself (pyproject.toml), editable;
#   - lib/kafka/: the Apache Kafka broker and tools, from Maven Central (jvm/kafka/pom.xml);
#   - lib/spark-kafka/: Spark's Kafka source and sink at the pyspark version, without the jars
#     pyspark already ships (jvm/spark-kafka/pom.xml);
#   - lib/jmx-exporter/: the Prometheus JMX exporter's Java agent, which scripts/kafka.sh loads
#     into every broker (jvm/jmx-exporter/pom.xml);
#   - lib/log4j/: the Log4j of every Spark JVM, the brokers' version (jvm/log4j/pom.xml);
#   - every jar fetched with Maven's strict checksums, then checked against its SHA-256 pinned in
#     jvm/jars.sha256 (a mismatch stops setup);
#   - Debian's chromium (and an emoji font), for the web page's browser tests, which Playwright
#     drives (Playwright's own browser download is not used): installed with apt-get when
#     /usr/bin/chromium is missing;
#   - Debian's prometheus, for the metrics test (tests/test_prometheus.py): installed with
#     apt-get when /usr/bin/prometheus is missing;
#   - Debian's iproute2 (`ip`), for the multi-host test's network namespaces
#     (tests/test_multihost.py): installed with apt-get when missing;
#   - lib/bench-viewers: the benchmarks' compiled viewer fleet (bench/viewers, Go), when Go is
#     installed; its one module (pinned in bench/viewers/go.sum) comes from the Go module proxy;
#   - the token secret and the subscriber key under $VAR_DIR/secrets, when not configured.
# Requires Python 3.11+, Java 17+ and Maven.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO_ROOT"
say() { echo "setup: $*"; }
die() { echo "setup: $*" >&2; exit 1; }

check_prerequisites() {
  command -v python3 >/dev/null || die "python3 not found; install Python 3.11+ (apt-get install python3 python3-venv)"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "Python 3.11+ is needed, found $(python3 --version 2>&1)"
  command -v java >/dev/null || die "java not found; install Java 17+ (apt-get install openjdk-17-jdk-headless)"
  local java_major
  java_major="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/.*java.specification.version = \([0-9]*\).*/\1/p')"
  [ "${java_major:-0}" -ge 17 ] || die "Java 17+ is needed, found Java ${java_major:-unknown}; set JAVA_HOME or install openjdk-17-jdk-headless"
  command -v mvn >/dev/null || die "mvn not found; install Maven (apt-get install maven)"
}

# stamp_matches STAMP FILE...: true when STAMP holds the checksum of FILE...
stamp_matches() {
  local stamp="$1"; shift
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(cat "$@" | sha256sum)" ]
}
write_stamp() {
  local stamp="$1"; shift
  cat "$@" | sha256sum > "$stamp"
}

# Whether the editable install maps the package to this checkout (not to a moved or another
# one that shares the .venv): -I keeps the current directory off the import path.
project_installed_here() {
  local installed
  installed="$(.venv/bin/python -I -c 'import emojistream, os
print(os.path.dirname(os.path.dirname(os.path.realpath(emojistream.__file__))))' 2>/dev/null)"
  [ "$installed" = "$(pwd -P)" ]
}

setup_python() {
  if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
  fi
  if stamp_matches .venv/.requirements.sha256 requirements.lock pyproject.toml \
      && project_installed_here; then
    return
  fi
  say "installing Python packages (requirements.lock, with their hashes) and the project"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes \
    -r requirements.lock
  # The project itself, editable: the scripts, testkit and bench import emojistream from here.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation --editable .
  write_stamp .venv/.requirements.sha256 requirements.lock pyproject.toml
}

# fetch_jars NAME: copy the runtime dependencies of jvm/NAME/pom.xml into lib/NAME.
fetch_jars() {
  local name="$1" pom="jvm/$1/pom.xml"
  if stamp_matches "lib/.$name.sha256" "$pom" requirements.lock; then
    return
  fi
  say "fetching jars of $pom from Maven Central into lib/$name"
  rm -rf "lib/$name"
  # --strict-checksums: a jar whose checksum differs from the repository's fails the fetch
  # (Maven only warns by default); verify_jars then checks the pins of jvm/jars.sha256.
  mvn --batch-mode --quiet --strict-checksums -Dstyle.color=never -f "$pom" \
    dependency:copy-dependencies \
    || die "mvn could not fetch the jars of $pom (see the messages above)"
  write_stamp "lib/.$name.sha256" "$pom" requirements.lock
}

# Spark's connector depends on jars that pyspark already ships (scala-library, hadoop-client,
# compression codecs, slf4j); two versions of one library on a classpath invite errors, so the
# connector folder keeps only what pyspark lacks.
drop_jars_pyspark_ships() {
  local pyspark_jars artifact
  pyspark_jars="$(.venv/bin/python -c 'import pyspark, os; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')"
  for jar in lib/spark-kafka/*.jar; do
    artifact="$(basename "$jar" | sed -E 's/-[0-9][^-]*(-[A-Za-z0-9.]+)?\.jar$//')"
    if compgen -G "$pyspark_jars/$artifact-[0-9]*.jar" >/dev/null; then
      rm "$jar"
    fi
  done
}

check_connector_version() {
  local pyspark_version
  pyspark_version="$(.venv/bin/python -c 'import pyspark; print(pyspark.__version__)')"
  compgen -G "lib/spark-kafka/spark-sql-kafka-0-10_2.13-$pyspark_version.jar" >/dev/null \
    || die "jvm/spark-kafka/pom.xml must name spark.version $pyspark_version, the pyspark version of requirements.txt"
}

# Every jar of lib/ must be the one pinned in jvm/jars.sha256 (emojistream/ops/jars.py), every
# run: a jar changed on disk or by a repository is found before a JVM loads it. After a version
# change in jvm/*/pom.xml: python -m emojistream.ops.jars pin FOLDER..., and review the diff.
verify_jars() {
  local folders=(spark-kafka jmx-exporter log4j)
  [ -z "${KAFKA_HOME:-}" ] && folders=(kafka "${folders[@]}")
  .venv/bin/python -m emojistream.ops.jars verify "${folders[@]}" >/dev/null \
    || die "lib/ does not hold the pinned jars (see above): remove lib/ and run setup again; if a pom.xml changed on purpose, pin the new jars (python -m emojistream.ops.jars pin ${folders[*]})"
}

# Debian's chromium, which tests/test_web_page.py drives through Playwright, and a colour emoji
# font so that the page's screenshot shows emojis. Only the browser tests need them: without
# apt-get this says what to install and carries on.
BROWSER_PACKAGES=(chromium fonts-noto-color-emoji)
setup_browser() {
  if [ -x /usr/bin/chromium ] && dpkg-query -W -f='${Status}' fonts-noto-color-emoji 2>/dev/null \
       | grep -q "ok installed"; then
    return
  fi
  if ! command -v apt-get >/dev/null; then
    say "WARNING: /usr/bin/chromium is missing and apt-get is not available here; the browser"
    say "WARNING: tests (tests/test_web_page.py) need Chromium at /usr/bin/chromium: install it"
    say "WARNING: (Debian/Ubuntu packages: ${BROWSER_PACKAGES[*]}) and run setup again"
    return
  fi
  apt_install "the browser tests" "${BROWSER_PACKAGES[@]}"
  [ -x /usr/bin/chromium ] || die "apt-get installed chromium, but /usr/bin/chromium is missing"
}

# apt_install PURPOSE PACKAGE...: install Debian packages with apt-get (as root, or with sudo).
apt_install() {
  local purpose="$1"; shift
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null \
      || die "installing $* needs root: run 'apt-get install $*' as root"
    sudo=(sudo)
  fi
  say "installing Debian's $* (apt-get) for $purpose"
  "${sudo[@]}" apt-get update -qq || die "apt-get update failed (see above)"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    || die "apt-get could not install $* (see above)"
}

# Debian's Prometheus server, which tests/test_prometheus.py starts on a free port (the package
# also installs a service that this project does not use). Without apt-get this says what to
# install and carries on.
setup_prometheus() {
  [ -x /usr/bin/prometheus ] && return
  if ! command -v apt-get >/dev/null; then
    say "WARNING: /usr/bin/prometheus is missing and apt-get is not available here; the metrics"
    say "WARNING: test (tests/test_prometheus.py) needs it: install Debian's prometheus package"
    return
  fi
  apt_install "the metrics test" prometheus
  [ -x /usr/bin/prometheus ] || die "apt-get installed prometheus, but /usr/bin/prometheus is missing"
}

# Debian's iproute2, whose `ip netns` builds the multi-host test's hosts.
setup_network_tools() {
  command -v ip >/dev/null && return
  if ! command -v apt-get >/dev/null; then
    say "WARNING: \`ip\` is missing and apt-get is not available here; the multi-host test"
    say "WARNING: (tests/test_multihost.py) needs iproute2: install it"
    return
  fi
  apt_install "the multi-host test" iproute2
}

# The viewer fleet of bench/fleet.py: a load generator only (the project's language is Python).
setup_bench_viewers() {
  if ! command -v go >/dev/null; then
    say "Go is not installed: skipping the benchmarks' viewer fleet (bench/viewers)"
    return
  fi
  if [ -x lib/bench-viewers ] && stamp_matches lib/.bench-viewers.sha256 bench/viewers/go.mod \
      bench/viewers/go.sum bench/viewers/main.go 2>/dev/null; then
    return
  fi
  say "building lib/bench-viewers (bench/viewers, modules from the Go module proxy)"
  # Every module go.mod requires, by name: their zips' checksums are checked against go.sum.
  (cd bench/viewers && go mod download $(sed -n 's/^require \([^ (]*\) .*/\1/p' go.mod) \
    && go build -o ../../lib/bench-viewers .)
  write_stamp lib/.bench-viewers.sha256 bench/viewers/go.mod bench/viewers/go.sum \
    bench/viewers/main.go
}

main() {
  check_prerequisites
  setup_browser
  setup_prometheus
  setup_network_tools
  setup_python
  mkdir -p lib
  if [ -z "${KAFKA_HOME:-}" ]; then
    fetch_jars kafka
  fi
  fetch_jars spark-kafka
  fetch_jars jmx-exporter
  fetch_jars log4j
  drop_jars_pyspark_ships
  check_connector_version
  verify_jars
  setup_bench_viewers
  # The token secret and the subscriber key, random, under $VAR_DIR/secrets unless configured.
  .venv/bin/python -m emojistream.common.secrets
  say "ready"
}

case "${1:-}" in
  -h|--help) sed -n '2,/^[^#]/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
main "$@"
