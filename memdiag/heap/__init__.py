"""The Python heap: a view of every gc-tracked object (frozen ones included), the
census of live torch tensors, and the allocation sites of leaked CUDA memory."""
