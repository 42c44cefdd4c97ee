"""POST /webhook/wibot/chat."""

from __future__ import annotations

from aiohttp import web

from services.chat import alerts, llm, quota, workflow
from services.chat.keys import PROMPT_TEMPLATE
from services.chat.prompt import render_system_prompt
from shared import AppKeys, authenticated, current_month, current_user, json_response, parse_body
from shared.contracts import ChatRequest, ChatResponse
from shared.metrics import TOKENS_SPENT


@authenticated()
async def chat(request: web.Request) -> web.Response:
    user = current_user(request)
    settings, pool = request.app[AppKeys.SETTINGS], request.app[AppKeys.DB]
    received_at = workflow.utc_now()
    body = await parse_body(request, ChatRequest)
    files = workflow.check_limits(body, settings)

    history = await workflow.load_memory(
        pool, conversation_id=body.conversation_id, user_id=user.user_id, window=settings.chat_memory_messages
    )
    system_prompt = render_system_prompt(request.app[PROMPT_TEMPLATE])
    messages = workflow.prepare_context(system_prompt, history, body.message, files)
    reservation = await quota.reserve_quota(
        pool,
        user_id=user.user_id,
        month=current_month(),
        prompt_tokens=quota.estimate_prompt_tokens([m["content"] for m in messages]),
        max_tokens=settings.mistral_max_tokens,
        default_quota=settings.default_quota_tokens,
    )
    try:
        reply = await llm.complete(
            request.app[llm.LLM_CLIENT],
            settings,
            model=settings.model_for_mode(body.mode),
            messages=messages,
            max_tokens=reservation.max_completion_tokens,
        )
        exchange = workflow.Exchange(
            body.conversation_id,
            user.user_id,
            body.message,
            files,
            received_at,
            reply.text,
            reply.total_tokens,
            reply.completion_tokens,
        )
        usage = await workflow.save_exchange(pool, exchange, reservation)
    except BaseException:
        await quota.refund(pool, reservation)
        raise
    TOKENS_SPENT.inc(reply.total_tokens)
    await alerts.notify_quota_thresholds(
        pool,
        request.app[alerts.ALERT_SENDER],
        user_id=user.user_id,
        username=user.username,
        month=reservation.month,
        usage=usage,
    )
    return json_response(
        ChatResponse(
            response=reply.text,
            tokens_used=reply.total_tokens,
            tokens_remaining=usage.remaining,
            conversation_id=body.conversation_id,
        )
    )
