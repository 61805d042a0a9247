"""The product's contracts as code: schema loading and validation (``validation``), reason
codes, the image event, dead-letter documents, and the record values that pass between a
transport and the job's steps.

Imports only ``streaming.runtime`` (and the schema files); everything else may import it.
"""
