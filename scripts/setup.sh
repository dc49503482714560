#!/usr/bin/env bash
# Set up everything the project needs, idempotently (a second run takes seconds):
#   - .venv/ with the pinned Python packages of requirements.txt;
#   - lib/kafka/: the Apache Kafka broker and tools, from Maven Central (jvm/kafka/pom.xml);
#   - lib/spark-kafka/: Spark's Kafka source and sink at the pyspark version, without the jars
#     pyspark already ships (jvm/spark-kafka/pom.xml).
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

setup_python() {
  if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
  fi
  if stamp_matches .venv/.requirements.sha256 requirements.txt; then
    return
  fi
  say "installing Python packages (requirements.txt)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  write_stamp .venv/.requirements.sha256 requirements.txt
}

# fetch_jars NAME: copy the runtime dependencies of jvm/NAME/pom.xml into lib/NAME.
fetch_jars() {
  local name="$1" pom="jvm/$1/pom.xml"
  if stamp_matches "lib/.$name.sha256" "$pom" requirements.txt; then
    return
  fi
  say "fetching jars of $pom from Maven Central into lib/$name"
  rm -rf "lib/$name"
  mvn --batch-mode --quiet -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
    || die "mvn could not fetch the jars of $pom (see the messages above)"
  write_stamp "lib/.$name.sha256" "$pom" requirements.txt
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

main() {
  check_prerequisites
  setup_python
  mkdir -p lib
  if [ -z "${KAFKA_HOME:-}" ]; then
    fetch_jars kafka
  fi
  fetch_jars spark-kafka
  drop_jars_pyspark_ships
  check_connector_version
  mkdir -p var
  say "ready"
}

main "$@"
