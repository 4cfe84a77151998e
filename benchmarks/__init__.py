"""`make bench`: the kit against the plain way of doing the same work, as ratios measured in one run (docs/speed.md)."""
