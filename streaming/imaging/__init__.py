"""Reading medical images and turning them into model input.

Shared by the streaming job and by training: ``decoding`` turns a file into
display-ready pixels, ``preprocessing`` turns those pixels into what a given model
expects. Keeping both here, in the package every worker installs, is what keeps
training and serving from drifting apart.
"""
