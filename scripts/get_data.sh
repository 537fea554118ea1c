#!/usr/bin/env bash
# Make Fashion-MNIST available: the Debian package when apt can install it, else torchvision's
# download into ~/.cache/fedprune/data. Idempotent: does nothing when the files are already there.
set -euo pipefail
PY=${1:-.venv/bin/python}
if "$PY" -c "import sys; from fedprune.data import locate_dataset; sys.exit(0 if locate_dataset('fashion-mnist') else 1)"; then
  exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo -n"
if command -v apt-get >/dev/null && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
  echo "installing the Debian package dataset-fashion-mnist ..."
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
    || echo "apt could not install dataset-fashion-mnist; trying torchvision's download"
fi
if ! "$PY" -c "import sys; from fedprune.data import locate_dataset; sys.exit(0 if locate_dataset('fashion-mnist') else 1)"; then
  echo "downloading Fashion-MNIST with torchvision into ~/.cache/fedprune/data ..."
  "$PY" -c "from fedprune.data import load_dataset; load_dataset('fashion-mnist', download=True)"
fi
"$PY" -c "from fedprune.data import locate_dataset; print('Fashion-MNIST:', locate_dataset('fashion-mnist'))"
