"""Tests of deploy/: the Dockerfile, compose, Kubernetes, Slurm, systemd and Prometheus files, read as their
tools read them."""
