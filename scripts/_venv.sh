# Sourced by the scripts beside it: make .venv (once) and install nerfcache with the extra named by $EXTRA.
set -eu
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    echo "Creating .venv (the first time takes a minute)..." >&2
    python3 -m venv .venv
fi
echo "Installing nerfcache[$EXTRA] into .venv..." >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$EXTRA]"
