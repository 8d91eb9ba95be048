"""How the teacher's prompts and answers are written: DSPy's JSON adapter, compact and bounded."""

from __future__ import annotations

import json

import dspy
from annotated_types import MaxLen
from dspy.adapters.utils import serialize_for_json
from pydantic import BaseModel

__all__ = ["CompactJSONAdapter"]


class CompactJSONAdapter(dspy.JSONAdapter):
    """DSPy's JSON adapter, with demonstrations answered in compact JSON and list bounds in the output schema.

    The model copies the demos' layout: indented JSON costs a newline-and-indent token per line, about a third of
    the output tokens on these small outputs.
    """

    def _prepare_response_format(self, lm, lm_kwargs, signature) -> None:
        # DSPy 3.4 builds the structured-output schema from the output fields' types alone and drops their
        # `max_length`. Without `maxItems` a server's grammar (llama.cpp, Ollama, vLLM) lets a small model list
        # items until the token limit (the 0.5B wrote "Speaker 1" ... "Speaker 94" for one DialogRE dialogue).
        super()._prepare_response_format(lm, lm_kwargs, signature)
        response_format = lm_kwargs.get("response_format")
        if not (isinstance(response_format, type) and issubclass(response_format, BaseModel)):
            return
        schema = response_format.model_json_schema()
        for name, field in signature.output_fields.items():
            bound = next((rule.max_length for rule in field.metadata if isinstance(rule, MaxLen)), None)
            output = schema.get("properties", {}).get(name, {})
            if bound is not None and output.get("type") == "array":
                output["maxItems"] = bound
        response_format.model_json_schema = lambda *args, **kwargs: schema

    def format_field_with_value(self, fields_with_values, role: str = "user") -> str:
        if role == "user":
            return super().format_field_with_value(fields_with_values, role)
        values = {field.name: value for field, value in fields_with_values.items()}
        return json.dumps(serialize_for_json(values), ensure_ascii=False, separators=(",", ":"))
