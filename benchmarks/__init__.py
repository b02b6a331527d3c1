"""Speed and quality benchmarks, run from the repository's root as `python -m benchmarks.NAME`; their figures are
on the pages in docs/benchmarks/."""
