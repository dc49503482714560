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

# Pid files hold "PID START": a pid names a process only together with its start, since after a
# crash or a reboot the pid is reused by another process. START is field 22 of /proc/PID/stat
# (the clock ticks from the boot to the process's start) and the boot's id. Not the start time
# of `ps -o lstart=`: ps derives it from the boot time as the wall clock sees it now, so it moves
# when the clock is stepped (NTP, a resumed VM) and a component would look like another process;
# field 22 never changes while the process lives, and the boot id tells a file from an earlier
# boot. The scripts need Linux anyway (setsid, /proc).

# process_start PID: print the start of process PID ("TICKS@BOOT_ID"); fail when no process PID
# runs (a zombie has exited: it does not run).
process_start() {
  local stat fields
  [[ "$1" =~ ^[1-9][0-9]*$ ]] || return 1
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  # Field 2 is the command in parentheses, which may hold anything: split what follows its ")".
  read -r -a fields <<< "${stat##*) }"
  case "${fields[0]}" in Z|X|x) return 1 ;; esac
  echo "${fields[19]}@$(cat /proc/sys/kernel/random/boot_id)"
}

# write_pid_file FILE PID: record in FILE that process PID, just started, is ours. A process that
# has exited already gets no file.
write_pid_file() {
  local start
  if start="$(process_start "$2")"; then
    echo "$2 $start" > "$1"
  else
    rm -f "$1"
  fi
}

# pid_of FILE: print the pid FILE names and succeed when that process still runs with the start
# write_pid_file recorded. When a process with that pid runs but has another start (the pid was
# reused), or FILE is in the old format (a bare pid), FILE is stale: it is removed, with a message
# on stderr. When no process with that pid runs, FILE is left to the caller.
pid_of() {
  local file="$1" pid="" start="" now
  [ -f "$file" ] || return 1
  read -r pid start _ < "$file" || true
  now="$(process_start "$pid")" || return 1
  if [ "$now" = "$start" ]; then
    echo "$pid"
    return 0
  fi
  say "removing stale pid file $file (pid $pid is another process now)" >&2
  rm -f "$file"
  return 1
}

# stop_pid_file FILE NAME GRACE_SECONDS: SIGTERM the process FILE names (pid_of), SIGKILL it if
# it still runs after GRACE_SECONDS, and remove FILE. Returns 1 when no such process ran. The
# wait asks for the same pid and start, so a pid reused meanwhile is never signalled.
stop_pid_file() {
  local pid_file="$1" name="$2" grace="$3" pid start deadline
  if ! pid="$(pid_of "$pid_file")"; then
    rm -f "$pid_file"
    return 1
  fi
  read -r _ start _ < "$pid_file"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + grace))
  while [ "$(process_start "$pid")" = "$start" ]; do
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
