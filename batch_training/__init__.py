"""Batch training: datasets, Keras model definitions and the trainer that registers models."""
