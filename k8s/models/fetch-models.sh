#!/bin/sh
# Copy a model repository (<model>/<version>/model.onnx, config.pbtxt ...) from object storage into /models,
# as KServe's storage initializer does: run by rclone's image (rclone/rclone) in the server pod's init container
# (components/models-storage) or in the fill Job of the models volume (components/models-pvc).
#   MODEL_URI   s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (the repository's root)
#   MODELS_DIR  where to copy it (default /models)
# Credentials come from the pod's cloud identity, never from a file here: IRSA or EKS Pod Identity for s3://
# (RCLONE_S3_ENV_AUTH), GKE Workload Identity for gs:// (RCLONE_GCS_ENV_AUTH). An empty or unreadable source fails
# the pod (exit status, message in `kubectl logs -c fetch-models`) instead of starting a server with no models.
set -eu
dest="${MODELS_DIR:-/models}"
case "${MODEL_URI:-}" in
  s3://?*) source=":s3:${MODEL_URI#s3://}" ;;
  gs://?*) source=":gcs:${MODEL_URI#gs://}" ;;
  *)
    echo "fetch-models: MODEL_URI must be s3://BUCKET/PREFIX or gs://BUCKET/PREFIX, not '${MODEL_URI:-}'" >&2
    exit 2
    ;;
esac
echo "fetch-models: copying ${MODEL_URI} to ${dest}"
# --error-on-no-transfer: an empty prefix is a mistake, not an empty repository. copy (not sync): a fill Job
# adds a new version beside those the running pods serve and never deletes one under them.
exec rclone copy --error-on-no-transfer --fast-list --transfers 8 --checkers 16 \
  --stats 30s --stats-one-line --stats-log-level NOTICE "${source}" "${dest}"
