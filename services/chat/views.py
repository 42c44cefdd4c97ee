"""POST /webhook/wibot/chat: parse, run the workflow, respond (as one JSON body, or streamed when asked)."""

from __future__ import annotations

from aiohttp import web

from services.chat import alerts, llm, streaming, workflow
from services.chat.attachments import EXTRACTOR
from services.chat.keys import PROMPTS
from shared import AppKeys, authenticated, current_user, json_response, parse_body
from shared.contracts import ChatRequest


@authenticated()
async def chat(request: web.Request) -> web.StreamResponse:
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
    user = current_user(request)
    fmt = streaming.requested_format(request, body)
    if fmt is None:
        return json_response(await workflow.run_chat(deps, user, body, received_at))
    return await streaming.respond(
        request,
        fmt,
        deps.llm_client,
        deps.settings,
        lambda call_model: workflow.run_chat(deps, user, body, received_at, call_model=call_model),
    )
