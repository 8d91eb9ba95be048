"""llama-cpp-python's OpenAI-compatible server, made to take requests as other OpenAI-compatible servers do.

    python bench/serve.py MODEL.gguf --alias qwen --port 8000

Two differences from llama.cpp's own server, vLLM or Ollama would make a comparison measure the server instead of
the systems, so this launcher rewrites each chat request before llama-cpp-python reads it:
- OpenAI's structured-output format `{"type": "json_schema", "json_schema": {"schema": ...}}`, which LiteLLM, DSPy
  and LangChain send, is answered with HTTP 500; it becomes llama-cpp-python's `{"type": "json_object",
  "schema": ...}`, so the schema is enforced by a grammar for every client alike.
- Its default repeat penalty of 1.1 (OpenAI's API has none) garbles repeated JSON keys; a request that does not set
  one gets 1.0.
- It reads only `max_tokens`, while LiteLLM (so DSPy) sends OpenAI's current `max_completion_tokens`: the limit was
  ignored and a looping answer ran to the end of the context (7,522 output tokens, 440 s for one PersonaExt
  utterance). `max_completion_tokens` becomes `max_tokens`.
Every answer under a JSON response format also gets what hotmem's in-process engine does, for every client alike:
hotmem's decoding policy (`hotmem.llama.constrain.JsonConstraint`, the same object the in-process engine uses):
- a `maxItems` on every array of its schema that has none: a grammar without one lets a small model list items until
  the token limit;
- the repeated-array-item guard: without it a small model repeats one list item until the token limit (measured:
  2,561 output tokens per PersonaExt utterance);
- at temperature 0, the grammar checked against the preferred token first: the same answer as llama-cpp-python's
  full-vocabulary grammar pass at every step, at up to twice the speed;
- a grammar that lets the model indent (llama-cpp-python's converter allows one space only).
"""

from __future__ import annotations

import argparse
import json
import os


class OpenAICompat:
    """ASGI middleware: rewrites /v1/chat/completions bodies as described in the module docstring."""

    def __init__(self, app):
        self.app = app

    @staticmethod
    def rewrite(data: dict) -> dict:
        response_format = data.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema") or {}
            data["response_format"] = {"type": "json_object", "schema": schema}
        data.setdefault("repeat_penalty", 1.0)
        if "max_completion_tokens" in data:
            data.setdefault("max_tokens", data.pop("max_completion_tokens"))
        return data

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            body = json.dumps(self.rewrite(json.loads(body))).encode()
        except (ValueError, AttributeError):
            pass  # not JSON: let the server answer it
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()  # after the body: wait for the client to disconnect
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app({**scope, "headers": headers}, replay, send)


def constrain_json_answers(llama) -> None:
    """Answer every request with a JSON schema under hotmem's decoding policy (`hotmem.llama.constrain`: bounded
    arrays, the repeated-item guard, the checked grammar at temperature 0), as the in-process engine does."""
    from hotmem.llama.constrain import JsonConstraint

    constraint, create = JsonConstraint(llama), llama.create_chat_completion

    def create_chat_completion(*args, **kwargs):
        response_format = kwargs.get("response_format") or {}
        if response_format.get("schema") and not kwargs.get("logits_processor") and kwargs.get("grammar") is None:
            temperature = kwargs.get("temperature")
            kwargs.update(constraint.kwargs(response_format["schema"], 0.0 if temperature is None else temperature))
            kwargs["response_format"] = None  # the policy's grammar replaces the server's own
        return create(*args, **kwargs)

    llama.create_chat_completion = create_chat_completion


def main() -> None:
    import uvicorn
    from llama_cpp.server import app as server_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    from hotmem.llama.engine import prefix_cache

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="GGUF file")
    parser.add_argument("--alias", default=None, help="model name clients ask for")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--n-ctx", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--cache-bytes", type=int, default=2 << 30, help="prompt-prefix KV cache size")
    args = parser.parse_args()
    app = server_app.create_app(
        server_settings=ServerSettings(host=args.host, port=args.port),
        model_settings=[ModelSettings(model=args.model, model_alias=args.alias, n_ctx=args.n_ctx,
                                      n_threads=args.threads, n_threads_batch=args.threads, verbose=False)],
    )
    # Reuse the KV state of prompt prefixes (instructions, demos) across requests, for every client. Not the
    # server's own `cache=True`: its RAM cache does not count the logits each state carries and grew past 15 GB.
    model = server_app._llama_proxy._current_model
    model.set_cache(prefix_cache(args.cache_bytes))
    constrain_json_answers(model)
    uvicorn.run(OpenAICompat(app), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
