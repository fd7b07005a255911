"""The serving stage: publish GGUFs to Ollama or llama-server, smoke-test, chat.

Entry points: ``publish`` (the stage), ``OllamaBackend`` and ``LlamaServerBackend``
(the ``ServingBackend`` port), ``modelfile`` and ``to_go_template`` (Ollama Modelfiles
and Jinja→Go template translation), ``ChatSession`` (chat with history).
"""

from tuneship.serving.backend import (
    BackendHealth,
    ChatStream,
    PublishedModel,
    ServingBackend,
)
from tuneship.serving.chat import ChatSession
from tuneship.serving.gotemplate import GoTemplate, to_go_template
from tuneship.serving.llama_backend import LlamaServerBackend
from tuneship.serving.modelfile import modelfile, stop_tokens
from tuneship.serving.ollama import OllamaBackend
from tuneship.serving.publish import (
    PublishResult,
    SmokeAnswer,
    SmokeTestFailed,
    publish,
    publish_model,
)

__all__ = [
    "BackendHealth",
    "ChatSession",
    "ChatStream",
    "GoTemplate",
    "LlamaServerBackend",
    "OllamaBackend",
    "PublishResult",
    "PublishedModel",
    "ServingBackend",
    "SmokeAnswer",
    "SmokeTestFailed",
    "modelfile",
    "publish",
    "publish_model",
    "stop_tokens",
    "to_go_template",
]
