"""The chat template. gptlab's models are base models, so a conversation becomes plain text, a turn
per message, `role: content`, and the model continues after a last `assistant:`:

    system: You are a terse assistant.
    user: Name a colour.
    assistant: Blue.
    user: Another one.
    assistant:

The reply ends where the model starts the next turn (a new line beginning `user:`, `assistant:` or
`system:`), or at its end-of-text token. A `developer` message (OpenAI's newer name for system) is
written as `system:`. The reply is exactly what the model wrote after `assistant:`, leading space
included. docs/serving.md shows the template too.
"""

from __future__ import annotations

from gptlab.serving.schemas import ChatMessage

SPEAKERS = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
TURN_STOPS = ("\nuser:", "\nassistant:", "\nsystem:")


def render(messages: list[ChatMessage]) -> str:
    return "".join(f"{SPEAKERS[m.role]}: {m.text()}\n" for m in messages) + "assistant:"
