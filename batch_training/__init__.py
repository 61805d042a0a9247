"""Batch training: datasets and their shards, preprocessing (Beam), Keras models, training,
evaluation, the promotion gate, the retraining recipe and batch inference.

May import ``streaming``'s shared code (imaging, modeling, contracts, runtime, the job's
scoring transform) so training and serving cannot drift; ``streaming``'s job never imports it.
"""
