"""Students: small models distilled from the teacher, each a `hotmem.backends.Backend`. `format` is the LoRA
student's contract (prompt, compact output, decoding schema); `lora` runs it on llama.cpp."""
