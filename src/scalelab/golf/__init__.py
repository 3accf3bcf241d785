"""Parameter golf: the smallest artifact (code + compressed weights) with the best val_bpb."""
