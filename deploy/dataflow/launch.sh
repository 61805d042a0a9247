#!/usr/bin/env bash
# Launch the streaming job on Dataflow: runner v2, Streaming Engine, one NVIDIA L4 per
# worker, Keras on JAX (the image from deploy/dataflow/Dockerfile).
#
# Secrets: Dataflow workers cannot be given environment variables, and options show in
# Dataflow's UI. Keep the Kafka (and Redis) credentials in Secret Manager: the job is given
# only the versions' names (--secret_manager_secrets) and each worker reads the values with
# its service account (roles/secretmanager.secretAccessor). SECRET_MANAGER_SECRETS
# overrides the default names below; locally the same variables come from the environment
# or from *_FILE.
#
# One job per consumer group: the job name is fixed per group, so Dataflow itself
# refuses a second running job of that name; this process also holds the group's lease
# in Kafka while the job runs (keep it running, e.g. under systemd, or the lease lapses
# after --lease_ttl_s and only the job name guards the group).
#
# MEDIMG_PRINT_ARGS=1 prints the arguments instead of launching (the offline test uses it).
set -euo pipefail
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET (gs://...)}"
: "${IMAGE:?set IMAGE (the worker image built from deploy/dataflow/Dockerfile)}"
: "${BOOTSTRAP_SERVERS:?set BOOTSTRAP_SERVERS (your Kafka cluster)}"
CONSUMER_GROUP="${CONSUMER_GROUP:-medimg-stream}"
SECRETS="projects/$PROJECT/secrets"
SECRET_MANAGER_SECRETS="${SECRET_MANAGER_SECRETS:-MEDIMG_KAFKA_SASL_USERNAME=$SECRETS/medimg-kafka-sasl-username/versions/latest,MEDIMG_KAFKA_SASL_PASSWORD=$SECRETS/medimg-kafka-sasl-password/versions/latest}"

args=(
  --runner=DataflowRunner
  --project="$PROJECT" --region="$REGION"
  --job_name="medimg-${CONSUMER_GROUP}"
  --temp_location="$BUCKET/tmp"
  --sdk_location=container
  --sdk_container_image="$IMAGE"
  --experiments=use_runner_v2
  --enable_streaming_engine
  --machine_type="${MACHINE_TYPE:-g2-standard-8}"
  --dataflow_service_options="worker_accelerator=type:${GPU_TYPE:-nvidia-l4};count:1;install-nvidia-driver"
  --max_num_workers="${MAX_WORKERS:-4}"
  --bootstrap_servers="$BOOTSTRAP_SERVERS"
  --consumer_group="$CONSUMER_GROUP"
  --kafka_security_protocol=SASL_SSL --kafka_sasl_mechanism=SCRAM-SHA-512
  --secret_manager_secrets="$SECRET_MANAGER_SECRETS"
  --model_registry="$BUCKET/models"
  --allowed_roots="$BUCKET/studies/"
  --min_batch_size=8 --max_batch_size=256
  --share_model_across_processes
)
if [[ "${MEDIMG_PRINT_ARGS:-0}" == 1 ]]; then
  printf '%s\n' "${args[@]}" "$@"
  exit 0
fi
exec python -m streaming "${args[@]}" "$@"
