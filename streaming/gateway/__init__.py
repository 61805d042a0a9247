"""The DICOM gateway, an edge service beside the job: a C-STORE/C-ECHO SCP and a STOW-RS
endpoint that store received instances durably and announce each one as an image event.

May import contracts, runtime, the Kafka transport (config, admin, producing) and tools'
helpers; never the job. The job never imports it: they meet only through the topics.
"""
