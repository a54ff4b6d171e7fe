"""Training PACL's e_v at scale: the loop, the data sources, torch.distributed, the schedule."""
