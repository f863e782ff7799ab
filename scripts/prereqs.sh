#!/usr/bin/env bash
# Checks what lakeserve needs from the machine before anything is installed, and says how to fix
# what is missing. With --test it also makes sure redis-server (for the Redis online-store test)
# is there, installing Debian's package when running as root, and so are chromium and
# chromium-driver (the headless-browser test of the REST dashboard), and that Go is there.
set -euo pipefail

fail() { echo "lakeserve prerequisites: $*" >&2; exit 1; }

python=${PYTHON:-python3}
command -v "$python" >/dev/null || fail "$python not found: install Python 3.11 to 3.13"
"$python" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 13)))' \
  || fail "$("$python" --version 2>&1) found; lakeserve needs Python 3.11 to 3.13 (set PYTHON=/path/to/python3.11)"
"$python" -c 'import venv, ensurepip' 2>/dev/null || fail "Python's venv module is missing (Debian: apt-get install python3-venv)"

command -v java >/dev/null || fail "java not found: install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)"
java_major=$(java -version 2>&1 | sed -nE 's/.*version "([0-9]+).*/\1/p' | head -1)
[ "${java_major:-0}" -ge 17 ] || fail "Java ${java_major:-unknown} found; Kafka 4 and Spark 4 need Java 17+"
command -v mvn >/dev/null || fail "mvn not found: install Apache Maven (Debian: apt-get install maven); it resolves Kafka's jars"

if [ "${1:-}" = "--test" ] && ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing redis-server (Debian package) for the Redis online-store test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    fail "redis-server not found: install it (Debian: sudo apt-get install redis-server) to run the tests"
  fi
fi
if [ "${1:-}" = "--test" ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium and chromium-driver (Debian packages) for the dashboard browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    fail "chromium/chromedriver not found: install them (Debian: sudo apt-get install chromium chromium-driver)"
  fi
fi
if [ "${1:-}" = "--test" ]; then
  # the object-store tests build SeaweedFS (its go.mod asks for Go 1.26) from the Go module proxy
  command -v go >/dev/null || fail "go not found: install Go 1.26+ (https://go.dev/dl) to run the tests"
  go_minor=$(go env GOVERSION | sed -nE 's/^go1\.([0-9]+).*/\1/p')
  [ "${go_minor:-0}" -ge 26 ] || fail "$(go env GOVERSION) found; the object-store tests need Go 1.26+ (https://go.dev/dl)"
fi
exit 0
