"""Other processes: the ``/proc`` process tree, the watch of this process' tree from
baseline to check, ranks and ``torch.distributed`` process groups."""
