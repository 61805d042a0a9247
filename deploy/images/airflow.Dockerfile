# Airflow with medimg[training,airflow] and the DAGs: the nightly retraining and batch
# inference. `airflow standalone` for one host (deploy/compose/); point a real deployment's
# scheduler and workers at the same image.
#
#   docker build -f deploy/images/airflow.Dockerfile -t medimg/airflow:0.1.0 .
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/medimg
COPY setup.py constraints.txt ./
COPY schemas ./schemas
RUN mkdir -p streaming batch_training && touch streaming/__init__.py batch_training/__init__.py \
 && /opt/medimg/bin/pip install -c constraints.txt ".[training,airflow]" \
 && /opt/medimg/bin/pip uninstall -y medimg
COPY streaming ./streaming
COPY batch_training ./batch_training
RUN /opt/medimg/bin/pip install --no-deps -c constraints.txt . \
 && find /opt/medimg -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE}
COPY --from=build /opt/medimg /opt/medimg
COPY dags /opt/medimg/dags
RUN useradd --system --uid 10001 --user-group --home-dir /opt/airflow --create-home airflow
USER 10001:10001
ENV PATH=/opt/medimg/bin:$PATH \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/medimg/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    KERAS_BACKEND=tensorflow \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["airflow"]
CMD ["standalone"]
