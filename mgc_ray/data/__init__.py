"""What Ray Data workers import (no torch at import): FMA and other collections, decoding, the
waveform cache, crops and the Ray Data pipelines over it."""
