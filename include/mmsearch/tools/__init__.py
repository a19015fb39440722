"""Developer tools, apart from the pipeline's stages: the sample-data generator, `make run`
(run_dag), the local server stack (`make up`) and the benchmark (`make bench`)."""
