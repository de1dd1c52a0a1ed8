"""tritonvision benchmarks: scenarios side by side, ratios, the machine named."""
