"""The bundled GPU inference node (OpenAI-compatible serving, metering, settlement, telemetry)."""
