"""Development and test doubles of the upstream providers (issue 14: out of the product's import
path). `make dev` runs them and the tests start them on loopback; product code never imports them
(the import-linter contract in `make lint` holds that), except the `seed_demo` dev command.
"""
