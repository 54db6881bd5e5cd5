"""Recording: run the notebook in a kernel under a tracer and keep the raw record."""
