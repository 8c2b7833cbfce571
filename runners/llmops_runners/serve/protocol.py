"""The request bodies of the OpenAI API as vLLM accepts them (pydantic; only pydantic imported here).

Fields a client may send but this engine does not act on are accepted and ignored, as vLLM does
(`extra="allow"`), when ignoring them cannot change the answer (`user`, zero penalties, ...); those
that would change it (n > 1, logprobs, echo, tools, JSON mode) are refused in `check_unsupported`
rather than silently dropped. Range checks live beside them, so each refusal names its field.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .errors import APIError, bad_request


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Body):
    include_usage: bool = False


class TextPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: str = Field(min_length=1)
    content: str | list[TextPart] | None = None
    name: str | None = None


class _Generation(_Body):
    model: str | None = None  # None: the base model, as vLLM
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None

    def common_checks(self) -> None:
        if self.n != 1:
            raise bad_request(f"n must be 1 on this server (one sequence per request), got {self.n}.", "n")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise bad_request(f"temperature must be between 0 and 2, got {self.temperature}.", "temperature")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise bad_request(f"top_p must be in (0, 1], got {self.top_p}.", "top_p")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise bad_request(f"{name} is not supported by this engine; send 0 or leave it out.", name)
        if any(s == "" for s in self.stop_strings()):
            raise bad_request("stop strings must not be empty.", "stop")

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(_Generation):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16  # OpenAI's and vLLM's default for completions
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def check_unsupported(self) -> None:
        self.common_checks()
        if self.echo:
            raise bad_request("echo is not supported by this engine.", "echo")
        if self.logprobs is not None:
            raise bad_request("logprobs are not supported by this engine.", "logprobs")
        if self.best_of not in (None, 1):
            raise bad_request(f"best_of must be 1 on this server, got {self.best_of}.", "best_of")
        if self.suffix:
            raise bad_request("suffix is not supported by this engine.", "suffix")

    def single_prompt(self) -> str | list[int]:
        """The one prompt of the request: a string or token ids (a batch of several prompts is refused)."""
        prompt: Any = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise bad_request(f"Send one prompt per request; this one has {len(prompt)}.", "prompt")
            prompt = prompt[0]
        if len(prompt) == 0:
            raise bad_request("The prompt is empty.", "prompt")
        return prompt


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None  # the newer name of max_tokens; wins when both are sent
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict] | None = None
    tool_choice: Any = None
    response_format: dict | None = None

    def check_unsupported(self) -> None:
        self.common_checks()
        if self.logprobs or self.top_logprobs:
            raise bad_request("logprobs are not supported by this engine.", "logprobs")
        if self.tools:
            raise bad_request("tools are not supported by this engine.", "tools")
        if self.tool_choice not in (None, "none", "auto"):
            raise bad_request("tool_choice is not supported by this engine.", "tool_choice")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise bad_request("response_format other than text (JSON mode) is not supported by this engine.", "response_format")
        if not self.messages:
            raise bad_request("messages must hold at least one message.", "messages")

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def plain_messages(self) -> list[dict]:
        """[{role, content}] with text content: a list of text parts is joined, other parts (images) refused."""
        out = []
        for i, message in enumerate(self.messages):
            content = message.content
            if isinstance(content, list):
                texts = []
                for part in content:
                    if part.type != "text" or part.text is None:
                        raise bad_request(f"messages[{i}].content holds a {part.type!r} part; this engine takes text only.",
                                          f"messages.{i}.content")
                    texts.append(part.text)
                content = "".join(texts)
            out.append({"role": message.role, "content": content or ""})
        if not any(m["content"] for m in out):
            raise bad_request("The messages have no content.", "messages")
        return out


class LoadLoRAAdapterRequest(_Body):
    lora_name: str
    lora_path: str


class UnloadLoRAAdapterRequest(_Body):
    lora_name: str
    lora_int_id: int | None = None


def reject_not_found(model: str | None) -> APIError:
    return APIError(404, f"The model `{model}` does not exist.", "model")

