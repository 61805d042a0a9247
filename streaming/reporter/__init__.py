"""The reporter (``medimg report``): an edge service beside the job that turns findings into
DICOM structured reports and explanation heatmaps and stores them in the PACS.

May import contracts, runtime, kafka, modeling and imaging; never the job.
"""
