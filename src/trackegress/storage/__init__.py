"""Where finished files go: the local directory, S3 (and compatibles), GCS, Azure Blob."""
