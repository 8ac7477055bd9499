"""Report writers of the benchmarks: numbers in, JSON + Markdown (+ PNG) out; prose from `benchmarks/templates/`."""
