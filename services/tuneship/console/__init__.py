"""The web console: pipelines, one pipeline's stages, curves and report, submit.

Server-rendered pages (aiohttp + Jinja2) and a little JavaScript of its own. It reaches
the controller only through ``PipelineClient`` with the token the person logged in
with, like the CLI; docs/console.md.
"""

from tuneship.console.app import RunningConsole, console_app, start_console
from tuneship.console.state import ConsoleSettings

__all__ = ["ConsoleSettings", "RunningConsole", "console_app", "start_console"]
