#!/usr/bin/env bash
# Launch the streaming job on Dataflow with one NVIDIA L4 per worker.
# Kafka credentials are not passed here: the worker image or Secret Manager provides
# MEDIMG_KAFKA_SASL_USERNAME / MEDIMG_KAFKA_SASL_PASSWORD(_FILE) (streaming/kafka/config.py).
set -euo pipefail
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET (gs://...)}"
: "${IMAGE:?set IMAGE (the worker image built from deploy/dataflow/Dockerfile)}"
: "${BOOTSTRAP_SERVERS:?set BOOTSTRAP_SERVERS (your Kafka cluster)}"

exec python -m streaming \
  --runner=DataflowRunner \
  --project="$PROJECT" --region="$REGION" \
  --job_name="medimg-stream-$(date +%Y%m%d-%H%M%S)" \
  --temp_location="$BUCKET/tmp" \
  --sdk_container_image="$IMAGE" \
  --experiments=use_runner_v2 \
  --machine_type=g2-standard-8 \
  --dataflow_service_options="worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver" \
  --max_num_workers="${MAX_WORKERS:-4}" \
  --bootstrap_servers="$BOOTSTRAP_SERVERS" \
  --kafka_security_protocol=SASL_SSL --kafka_sasl_mechanism=SCRAM-SHA-512 \
  --model_registry="$BUCKET/models" \
  --allowed_roots="$BUCKET/studies/" \
  --min_batch_size=8 --max_batch_size=256 \
  --share_model_across_processes \
  "$@"
