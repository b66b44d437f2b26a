#!/usr/bin/env bash
# Installs everything the sidecar and its tests need on a fresh Debian machine:
# dcmtk, Orthanc and dicom3tools from apt, the Python stack into .venv with torch pinned
# (unpinned, a CUDA build of several GB would come along). Idempotent and quiet on re-runs.
#   scripts/install.sh          the service and the default test dependencies
#   scripts/install.sh --test   also the optional parts the suite can exercise here: PostgreSQL and
#                               psycopg (shared journal), ONNX Runtime and the Triton client, and the
#                               OHIF viewer's built app (npm @ohif/app, dist/ only) for tests/e2e/test_viewer.py
set -euo pipefail
TEST_EXTRAS=0; [ "${1:-}" = "--test" ] && TEST_EXTRAS=1
cd "$(dirname "$0")/.."
need=()
command -v storescu >/dev/null || need+=(dcmtk)
command -v Orthanc >/dev/null || need+=(orthanc)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
[ -x /usr/bin/chromium ] || need+=(chromium)          # the dashboard's and the viewer's browser tests
# Orthanc's DICOMweb plugin: the viewer test's PACS and the STOW-RS destination's test peer
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v DicomSRValidator >/dev/null || need+=(pixelmed-apps)  # pixelmed's SR template validator
command -v docker-compose >/dev/null || need+=(docker-compose)  # validates docker-compose.yml
# Opt-in: SIDECAR_WITH_POSTGRES=1 also installs PostgreSQL and psycopg, so the journal suite and
# tests/integration/test_shared_journal.py run on PostgreSQL too (they skip, saying why, without).
WITH_PG=${SIDECAR_WITH_POSTGRES:-$TEST_EXTRAS}
if [ "$TEST_EXTRAS" = 1 ] && ! command -v npm >/dev/null; then need+=(nodejs npm); fi  # fetches OHIF
if [ "$WITH_PG" = 1 ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then need+=(postgresql); fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's orthanc package may start a system instance on 4242/8042; ours runs on free ports,
# so it is left alone.
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
extras=dev; [ "$WITH_PG" = 1 ] && extras=dev,postgres
[ "$TEST_EXTRAS" = 1 ] && extras=dev,postgres,onnx,triton
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-$extras
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 -e ".[$extras]"
  touch "$stamp"
fi
# The real-Triton tests (tests/integration/test_triton.py, the Triton part of test_backends.py) start
# a Triton server through nvidia-pytriton, which runs under Debian's own python3.11 in its own venv
# (its bundled server links against that interpreter). --test creates it, so CI runs those tests.
if [ "$TEST_EXTRAS" = 1 ] && ! .venv-triton/bin/python -c "import pytriton" 2>/dev/null; then
  TRITON_PY=/usr/bin/python3.11
  if [ ! -x "$TRITON_PY" ] || ! "$TRITON_PY" -c "import ensurepip" 2>/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3.11 python3.11-venv >/dev/null
  fi
  [ -x .venv-triton/bin/python ] || "$TRITON_PY" -m venv .venv-triton
  .venv-triton/bin/pip install -q --disable-pip-version-check nvidia-pytriton==0.7.0 onnxruntime
fi
# The OHIF viewer (static build, the package's dist/) for the viewer test, pinned; npm only packs
# the package (its dist/ is the whole app), nothing is built or run with node.
OHIF_VERSION=3.12.0
if [ "$TEST_EXTRAS" = 1 ] && [ ! -f ".ohif/$OHIF_VERSION/dist/index.html" ]; then
  rm -rf ".ohif/$OHIF_VERSION" && mkdir -p ".ohif/$OHIF_VERSION"
  (cd ".ohif/$OHIF_VERSION" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null \
    && tar -xzf ohif-app-$OHIF_VERSION.tgz --strip-components=1 package/dist && rm ohif-app-$OHIF_VERSION.tgz)
fi
