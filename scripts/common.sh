# Sourced by the project's scripts: paths, the effective configuration and small helpers.
# The configuration comes from emojistream/config.py (defaults, overridden by the environment),
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

# pid_alive FILE: true when FILE holds the pid of a running process.
pid_alive() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# stop_pid_file FILE NAME GRACE_SECONDS: SIGTERM the process whose pid FILE holds, SIGKILL it if
# it still runs after GRACE_SECONDS, and remove FILE. Returns 1 when no such process ran.
stop_pid_file() {
  local pid_file="$1" name="$2" grace="$3" pid deadline
  if ! pid_alive "$pid_file"; then
    rm -f "$pid_file"
    return 1
  fi
  pid="$(cat "$pid_file")"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + grace))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "$name (pid $pid) did not stop within ${grace}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$pid_file"
}

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}
