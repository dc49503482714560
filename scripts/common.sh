# Sourced by the project's scripts: paths, the effective configuration and small helpers.
# The configuration comes from the settings (defaults, overridden by the environment),
# so no script hard-codes a host, a port or a topic.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="$REPO_ROOT/.venv"
VENV_PYTHON="$VENV_DIR/bin/python"
SCRIPT_NAME="$(basename "$0")"

die() { echo "$SCRIPT_NAME: $*" >&2; exit 1; }

# usage: print the calling script's header comment.
usage() {
  sed -n '2,/^[^#]/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

# show_help_if_asked ARGS...: print the calling script's header comment and exit on -h/--help.
show_help_if_asked() {
  case "${1:-}" in
    -h|--help) usage; exit 0 ;;
  esac
}
say() { echo "$SCRIPT_NAME: $*"; }

_config="$(cd "$REPO_ROOT" && python3 -m emojistream.config --shell)" || die "cannot read the configuration"
eval "$_config"
unset _config

KAFKA_VAR_DIR="$VAR_DIR/kafka"

# The classpath of Kafka's broker and tools: a user's own distribution (KAFKA_HOME) or the
# jars that scripts/setup.sh fetched from Maven Central into lib/kafka.
kafka_classpath() {
  if [ -n "$KAFKA_HOME" ]; then
    [ -d "$KAFKA_HOME/libs" ] || die "KAFKA_HOME=$KAFKA_HOME has no libs/ folder"
    echo "$KAFKA_HOME/libs/*"
  else
    ls "$REPO_ROOT"/lib/kafka/kafka_2.13-*.jar >/dev/null 2>&1 \
      || die "Kafka's jars are missing: run scripts/setup.sh"
    echo "$REPO_ROOT/lib/kafka/*"
  fi
}

# Run one of Kafka's tool classes the way Kafka's bin/kafka-run-class.sh does, logging
# warnings and errors to stderr only.
run_kafka_tool() {
  local main_class="$1"; shift
  exec java -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$REPO_ROOT/config/kafka-tools-log4j2.properties" \
    -cp "$(kafka_classpath)" "$main_class" "$@"
}

# supervised ACTION ARGS...: this host's supervisord, through emojistream.ops.system (up, down,
# status, start, stop, state; see its --help). It alone starts and signals the processes.
supervised() {
  (cd "$REPO_ROOT" && "$VENV_PYTHON" -m emojistream.ops.system "$@")
}

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}
