"""Test and demo helpers kept out of the runtime packages: Fashion-MNIST as example data, example
inputs in every source format, and a local S3 server for the quickstart's `--s3` and the tests."""
