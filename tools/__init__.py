"""Tools that use the engine: the speed benchmark (and its flop counting), the GPU check."""
