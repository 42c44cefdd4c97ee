from aiohttp import web

PROMPT_TEMPLATE = web.AppKey("prompt_template", str)
