"""POST /webhook/wibot/chat: admit → parse → prepare the turn → the model (whole, or streamed by the writer) →
settle the turn → respond. POST /webhook/wibot/rag/ingest: an ingestion of the knowledge base, for admins."""

from __future__ import annotations

from aiohttp import web

from services.chat import llm
from services.chat.admission import admit_chat, prepared_in_turn
from services.chat.knowledge.ingest import ingest
from services.chat.resources import CHAT, Chat
from services.chat.workflow import Turn, prepare_turn, settle_turn
from services.chat.writer import ReplyWriter, requested_format
from shared import audit, authenticated, current_user, json_response, parse_body
from shared.contracts import ChatRequest, IngestStats, RagIngestRequest, RagIngestResponse
from shared.db import utc_now


@authenticated()
async def chat(request: web.Request) -> web.StreamResponse:
    chat = request.app[CHAT]
    user = current_user(request)
    async with admit_chat(chat, user.user_id, body_bytes=request.content_length):
        received_at = utc_now()
        async with prepared_in_turn(chat, user.user_id):
            body = await parse_body(request, ChatRequest)
            fmt = requested_format(request, body)
            turn = await prepare_turn(chat, user, body, received_at)
        if fmt is None:
            async with turn.budget.spent_from_the_call(turn.prompt_tokens):
                reply = await llm.complete(
                    chat.model, chat.settings, model=turn.model, messages=turn.messages, max_tokens=turn.max_tokens
                )
            return json_response(await settle_turn(chat, turn, turn.restored(reply)))
        async with turn.budget.spent_from_the_call(turn.prompt_tokens):  # before the first text: the usual envelope
            stream = await llm.open_stream(
                chat.model, chat.settings, model=turn.model, messages=turn.messages, max_tokens=turn.max_tokens
            )
        writer = ReplyWriter(request, fmt, heartbeat_s=chat.settings.stream_heartbeat_s)
        # Runs to its end when the client leaves (the handler is cancelled): the partial reply is still settled.
        return await chat.background.shielded(stream_turn(chat, turn, stream, writer))


async def stream_turn(chat: Chat, turn: Turn, stream: llm.ModelStream, writer: ReplyWriter) -> web.StreamResponse:
    """The model's deltas to the client, then the turn settled and its result sent. A client that leaves mid-reply:
    the model call is dropped, the exchange saved with the text produced so far and those tokens charged (the
    model did that work; the conversation keeps the question and its partial answer)."""
    try:
        async with turn.budget.given_back_on_failure():
            try:
                delivered = await writer.relay(turn.pseudonyms.restoring(stream))
            finally:
                await stream.close()  # a client gone or a failure: the model stops working for nobody
            reply = turn.restored(stream.reply(interrupted=not delivered))
    except Exception as exc:  # the model failed mid-reply: nothing saved, the reservation given back
        return await writer.fail(exc)
    try:
        result = await settle_turn(chat, turn, reply)
    except Exception as exc:
        return await writer.fail(exc)
    return await writer.finish(result)


@authenticated(admin=True)
async def rag_ingest(request: web.Request) -> web.Response:
    body = await parse_body(request, RagIngestRequest)
    chat = request.app[CHAT]
    stats = await ingest(chat.knowledge, path=body.path, mode=body.mode, category=body.category)
    await audit.record(
        chat.pool, audit.KB_INGESTION, actor_id=current_user(request).user_id, target=body.path or ".",
        request=request, details={"mode": body.mode, **stats.as_dict()},
    )  # fmt: skip
    return json_response(RagIngestResponse(stats=IngestStats.model_validate(stats.as_dict())))
