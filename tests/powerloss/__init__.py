"""A power-loss test file system (FUSE) and the harness that mounts it, cuts the power and checks
what survived. See docs/testing.md, "Power-loss tests"."""
