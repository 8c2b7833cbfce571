"""The compression runner: merge, prune, distill and quantize a model in chained stages, with a quality gate.

`python -m llmops_runners.compress --config config.json`; the contract is in docs/runner-contract.md.
"""
