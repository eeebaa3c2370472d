"""Side-by-side benchmarks: gptlab against a reference on identical work, results as Markdown tables."""
