"""Tests of storage_backends: one contract suite for every backend, plus S3 against a real SeaweedFS."""
