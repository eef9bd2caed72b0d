"""The engine side, torch-free: the launch line (`serve`), the engine process, vLLM's memory arithmetic
(`plan`) and the server's speculative-decoding metrics."""
