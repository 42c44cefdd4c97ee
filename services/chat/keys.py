from aiohttp import web

from services.chat.prompt import PromptTemplates

PROMPTS = web.AppKey("prompts", PromptTemplates)
