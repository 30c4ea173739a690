"""Building blocks of the speaker backend: layer aggregation, pooling, speaker networks."""
