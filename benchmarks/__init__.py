"""Speed and memory benchmarks: `python -m benchmarks` prints a table and writes it as JSON."""
