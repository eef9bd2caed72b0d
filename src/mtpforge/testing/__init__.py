"""Checkpoint builders for tests, benchmarks and the demo: small complete
checkpoints of each family (`factory`) and header-exact hollow replicas of
real inventories (`replica`). Shipped with the package so every verb can be
tried on any machine."""
