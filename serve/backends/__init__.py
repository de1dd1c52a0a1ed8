"""Python-backend model implementations that Triton loads."""
