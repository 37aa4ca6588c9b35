#!/usr/bin/env bash
# Runs every test: installs the DynamoDB emulator (moto) and the AWS CLI from PyPI when missing,
# starts moto on a free port, runs fmt, clippy and the whole cargo test suite, and stops moto.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import moto.server, flask, flask_cors, awscli, schemathesis, standardwebhooks, twilio, aiosmtpd, openai' >/dev/null 2>&1; then
  echo "installing moto[server], awscli, schemathesis, standardwebhooks, twilio, aiosmtpd and openai from PyPI..."
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]>=5' awscli 'schemathesis>=4' \
    'standardwebhooks>=1.1' 'twilio>=9' 'aiosmtpd>=1.4' 'openai>=1.99'
fi

mkdir -p target

# The Vercel AI SDK (npm `ai` v6, which runs on Node 20) for the UI message stream's test.
if [ ! -d tests/ui/node_modules/ai ]; then
  echo "installing the ai package (npm) for the UI message stream's test..."
  (cd tests/ui && npm install --silent --no-audit --no-fund)
fi

# The console's browser test drives headless Chromium through its WebDriver (Debian packages).
# Without them that one test says it was skipped; everything else runs.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing chromium and chromium-driver (apt-get) for the console's browser test..."
    if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
      >target/apt.log 2>&1; then
      echo "*** could not install chromium (target/apt.log): the console's browser test will be SKIPPED ***"
    fi
  else
    echo "*** chromium and chromedriver are missing and cannot be installed here: the console's browser test will be SKIPPED ***"
  fi
fi
if ! python3 -c 'import selenium' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'selenium>=4.20' >target/pip-selenium.log 2>&1 ||
    echo "*** could not install selenium (target/pip-selenium.log): the console's browser test will be SKIPPED ***"
fi
# With everything in place, the browser test must run: a missing piece later is a failure, not a skip.
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 &&
  python3 -c 'import selenium' >/dev/null 2>&1; then
  export AGENT_SERVER_BROWSER=required
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 scripts/moto_server.py 127.0.0.1 "$port" >target/moto.log 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/')" >/dev/null 2>&1; then
    break
  fi
  sleep 0.2
done
export AGENT_SERVER_TEST_DYNAMODB="http://127.0.0.1:$port"
echo "moto (DynamoDB emulator) on $AGENT_SERVER_TEST_DYNAMODB"

# --workspace: the server and the benchmark harness (bench/); the harness's smoke test runs the
# server binary, which `cargo test --workspace` builds before running any test.
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --all-targets "$@"
