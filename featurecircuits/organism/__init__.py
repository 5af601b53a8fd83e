"""The bundled model organism: a small Pythia-architecture model trained on a synthetic corpus."""
