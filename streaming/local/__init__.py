"""Running everything on one machine: the embedded Kafka-compatible broker, the local job
launcher, known-truth phantom studies, reference data and ``medimg demo``.

May import anything in ``streaming`` (it starts the job as a subprocess); the job never
imports it.
"""
