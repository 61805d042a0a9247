"""Reading medical images and turning them into model input, shared by the job and training.

``decoding`` (with ``dicom``, ``raster``, ``limits``, ``frames``) turns a file into
display-ready pixels; ``preprocessing`` turns pixels into what a model expects; ``access``
decides where images may be read. Imports only contracts and runtime.
"""
