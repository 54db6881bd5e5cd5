"""Code that runs inside the user's kernel and workers: stdlib only, injected by path."""
