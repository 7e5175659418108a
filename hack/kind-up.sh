#!/usr/bin/env bash
# A local dyff on kind: a cluster named dyff, the three images built here and loaded
# into it, and config/overlays/kind applied (the CRDs, the controller, and in-memory
# Cloud Datastore and GCS emulators). Needs docker (with a running engine), kind and
# kubectl. Idempotent: re-running rebuilds the images and re-applies.
#
#   hack/kind-up.sh             # then: kubectl create namespace demo
#                               #       kubectl apply -f config/samples/
#   KIND_CLUSTER=other hack/kind-up.sh
#   hack/kind-up.sh --delete    # remove the cluster
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${KIND_CLUSTER:-dyff}"
# The Datastore emulator image (google-cloud-cli ships the emulator the tests run).
DATASTORE_IMAGE="gcr.io/google.com/cloudsdktool/google-cloud-cli:528.0.0-emulators"

die() { echo "kind-up: $*" >&2; exit 1; }

missing=()
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  die "missing on PATH: ${missing[*]} (install docker, kind <https://kind.sigs.k8s.io> and kubectl)"
fi
docker info >/dev/null 2>&1 \
  || die "docker is installed but no Docker engine answers (is the daemon running? DOCKER_HOST?)"

if [[ "${1:-}" == "--delete" ]]; then
  kind delete cluster --name "$CLUSTER"
  exit 0
fi

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "kind-up: cluster $CLUSTER exists"
else
  kind create cluster --name "$CLUSTER" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

echo "kind-up: building images"
docker build -f config/controller/Dockerfile -t dyff-controller:dev .
docker build -f config/runtime/Dockerfile -t dyff-runtime:dev .
docker build -f config/overlays/kind/gcs-emulator/Dockerfile -t dyff-gcs-emulator:dev \
  config/overlays/kind/gcs-emulator
docker image inspect "$DATASTORE_IMAGE" >/dev/null 2>&1 || docker pull "$DATASTORE_IMAGE"

echo "kind-up: loading images into kind"
for image in dyff-controller:dev dyff-runtime:dev dyff-gcs-emulator:dev "$DATASTORE_IMAGE"; do
  kind load docker-image --name "$CLUSTER" "$image"
done

echo "kind-up: applying config/overlays/kind"
# The CRDs first, so the API server serves dyff.io before anything uses it.
kubectl apply --server-side -f crds/dyff.io_datasets.yaml -f crds/dyff.io_evaluations.yaml \
  -f crds/dyff.io_models.yaml
kubectl wait --for condition=Established --timeout=60s \
  crd/models.dyff.io crd/datasets.dyff.io crd/evaluations.dyff.io
kubectl apply -k config/overlays/kind --server-side --force-conflicts
# A rebuilt :dev image has the same name: restart so the pods take it.
kubectl -n dyff-system rollout restart deployment/dyff-controller
for deployment in dyff-datastore dyff-gcs dyff-controller; do
  kubectl -n dyff-system rollout status "deployment/$deployment" --timeout=300s
done
echo "kind-up: dyff is running in kind-$CLUSTER (namespace dyff-system)"
