"""POST /webhook/wibot/chat: parse, run the workflow, respond (as one JSON body, or streamed when asked);
POST /webhook/wibot/rag/ingest: an ingestion of the knowledge base, for admins."""

from __future__ import annotations

from aiohttp import web

from services.chat import alerts, llm, streaming, workflow
from services.chat.admission import admit_chat
from services.chat.attachments import EXTRACTOR
from services.chat.keys import CHATS, PROMPTS
from services.chat.knowledge.base import KNOWLEDGE
from services.chat.knowledge.ingest import ingest
from shared import AppKeys, authenticated, current_user, json_response, parse_body
from shared.contracts import ChatRequest, IngestStats, RagIngestRequest, RagIngestResponse


@authenticated()
async def chat(request: web.Request) -> web.StreamResponse:
    settings, pool = request.app[AppKeys.SETTINGS], request.app[AppKeys.DB]
    async with admit_chat(request.app[CHATS], pool, settings, current_user(request).user_id):
        return await admitted_chat(request)


async def admitted_chat(request: web.Request) -> web.StreamResponse:
    received_at = workflow.utc_now()
    body = await parse_body(request, ChatRequest)
    deps = workflow.ChatDeps(
        settings=request.app[AppKeys.SETTINGS],
        pool=request.app[AppKeys.DB],
        llm_client=request.app[llm.LLM_CLIENT],
        prompts=request.app[PROMPTS],
        alert_sender=request.app[alerts.ALERT_SENDER],
        extractor=request.app[EXTRACTOR],
        knowledge=request.app[KNOWLEDGE],
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


@authenticated(admin=True)
async def rag_ingest(request: web.Request) -> web.Response:
    body = await parse_body(request, RagIngestRequest)
    stats = await ingest(request.app[KNOWLEDGE], path=body.path, mode=body.mode, category=body.category)
    return json_response(RagIngestResponse(stats=IngestStats.model_validate(stats.as_dict())))
