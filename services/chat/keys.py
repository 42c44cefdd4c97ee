from aiohttp import web

from services.chat.prompt import PromptTemplates
from shared.lanes import Lanes

PROMPTS = web.AppKey("prompts", PromptTemplates)
# Chats in progress in this process, per user (services/chat/admission.py).
CHATS = web.AppKey("chats", Lanes)
