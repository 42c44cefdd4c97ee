"""POST /webhook/wibot/chat: parse, run the workflow, respond."""

from __future__ import annotations

from aiohttp import web

from services.chat import alerts, llm, workflow
from services.chat.attachments import EXTRACTOR
from services.chat.keys import PROMPTS
from shared import AppKeys, authenticated, current_user, json_response, parse_body
from shared.contracts import ChatRequest


@authenticated()
async def chat(request: web.Request) -> web.Response:
    received_at = workflow.utc_now()
    body = await parse_body(request, ChatRequest)
    deps = workflow.ChatDeps(
        settings=request.app[AppKeys.SETTINGS],
        pool=request.app[AppKeys.DB],
        llm_client=request.app[llm.LLM_CLIENT],
        prompts=request.app[PROMPTS],
        alert_sender=request.app[alerts.ALERT_SENDER],
        extractor=request.app[EXTRACTOR],
    )
    return json_response(await workflow.run_chat(deps, current_user(request), body, received_at))
