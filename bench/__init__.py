"""segcls.bench: the benchmarks users run to pick a backend, a precision and a batch size (`segcls-bench`)."""
