#!/usr/bin/env bash
# The Google Cloud side of dyff on GKE and Cloud Run: APIs, bucket, image repository,
# service accounts and their roles, as idempotent gcloud commands (dyff/gcp.py says
# which and why). A dry run by default: it prints the commands; --apply runs them.
#
#   hack/gcp-setup.sh --project P --bucket B --location europe-west4 [--apply]
#   hack/gcp-setup.sh account ACCOUNT --project P [--apply]   # one account's namespace
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
if [[ "${1:-}" == "account" ]]; then
  shift
  exec "$python" -m dyff.cli admin gcp-account "$@"
fi
exec "$python" -m dyff.cli admin gcp-setup "$@"
