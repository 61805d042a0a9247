"""The DICOM gateway, an edge service beside the job: C-STORE/C-ECHO and STOW-RS in, durable
content-addressed storage, one acknowledged image event per instance, series-complete notices.
May import contracts, runtime and the Kafka transport; never the job, which never imports it.
"""
