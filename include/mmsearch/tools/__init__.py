"""Developer tools, apart from the pipeline's stages: the bundled sample's generator
(sample_data, sample_world, ceiling), `make run` (run_dag), `make serve-example`, `make mlflow-ui`
and the benchmarks (`make bench`: bench, bench_report; `make bench-stack`: bench_stack,
bench_serving). The server stack itself is mmsearch.stack."""
