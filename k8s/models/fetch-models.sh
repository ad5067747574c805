#!/bin/sh
# Copy a model repository (<model>/<version>/model.onnx, config.pbtxt ...) from object storage into /models,
# as KServe's storage initializer does: run by rclone's image (rclone/rclone) in the server pod's init container
# (components/models-storage) or in the fill Job of the models volume (components/models-pvc).
#   MODEL_URI   s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (the repository's root)
#   MODELS_DIR  where to copy it (default /models)
# Credentials come from the pod's cloud identity, never from a file here: IRSA or EKS Pod Identity for s3://
# (RCLONE_S3_ENV_AUTH), GKE Workload Identity for gs:// (RCLONE_GCS_ENV_AUTH). An empty or unreadable source, or
# one that holds no model, fails the pod (exit status, message in `kubectl logs -c fetch-models`) instead of
# starting a server with no models; a run that finds everything already copied succeeds.
# Exit status: 2 a bad MODEL_URI, 3 an empty or unreadable source, 4 no model after copying, else rclone's.
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
# An empty prefix (a typo, the wrong bucket) is a mistake, not an empty repository: refuse it before copying.
# Listing nothing also covers a source rclone cannot read (its error is in the log above this line).
if [ -z "$(rclone lsf -R --files-only --fast-list "${source}" | head -n 1)" ]; then
  echo "fetch-models: ${MODEL_URI} holds no files (or cannot be read): refusing to start with no models" >&2
  exit 3
fi
echo "fetch-models: copying ${MODEL_URI} to ${dest}"
# copy (not sync): a fill Job adds a new version beside those the running pods serve and never deletes one under
# them. Nothing new to copy is success: a restarted init container on a surviving emptyDir, or a fill Job run
# again over a filled volume, finds everything there.
rclone copy --fast-list --transfers 8 --checkers 16 \
  --stats 30s --stats-one-line --stats-log-level NOTICE "${source}" "${dest}"
# A source of files but no model (the prefix one level too deep or too high) fails here, not in the server.
if [ -z "$(find "${dest}" \( -name '*.onnx' -o -name config.pbtxt -o -name config.toml \) -type f | head -n 1)" ]
then
  echo "fetch-models: ${dest} holds no model (*.onnx, config.pbtxt or config.toml) after copying ${MODEL_URI}" >&2
  exit 4
fi
# The marker the server pods of components/models-pvc wait for (their wait-for-models init container): written
# only once a copy succeeded and the volume holds a model. The repository ignores names starting with a dot.
touch "${dest}/.complete"
echo "fetch-models: ${dest} complete"
